/* edge-deploy firmware skeleton: minimal Cortex-M start-up (vector table, reset handler).
 * Copies .data, zeroes .bss, enables the FPU, runs C++ constructors, then main(). */
#include <stdint.h>
#include <stdlib.h>

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;
extern int main(int argc, char** argv);
extern void __libc_init_array(void);

void Reset_Handler(void);
void Fault_Handler(void);

/* Linked with -nostartfiles: provide what crti/crtn and crtbegin would. */
void _init(void) {}
void _fini(void) {}
void* __dso_handle = 0;

__attribute__((section(".isr_vector"), used)) void (*const g_vectors[16])(void) = {
    (void (*)(void))(&_estack), Reset_Handler, Fault_Handler, Fault_Handler, Fault_Handler,
    Fault_Handler, Fault_Handler, 0, 0, 0, 0, Fault_Handler, Fault_Handler, 0, Fault_Handler,
    Fault_Handler,
};

void Reset_Handler(void) {
  uint32_t* src = &_sidata;
  for (uint32_t* dst = &_sdata; dst < &_edata;) *dst++ = *src++;
  for (uint32_t* dst = &_sbss; dst < &_ebss;) *dst++ = 0;
#if defined(__ARM_FP)
  /* CPACR: full access to CP10 and CP11 (the FPU) before any float instruction runs */
  *(volatile uint32_t*)0xE000ED88 |= (0xFu << 20);
  __asm volatile("dsb\n isb");
#endif
  __libc_init_array();
  exit(main(0, 0));
}

void Fault_Handler(void) {
  exit(3); /* a hard fault ends the run with a code the runner can see */
}
