/* Hide AVX-512 (and AVX-VNNI, AMX) from every CPUID this process runs, so libraries that pick
 * their kernels by CPUID (ONNX Runtime's MLAS, numpy, headrace's own dispatch) take the AVX2
 * paths they take on an AVX2-only machine (Zen 2, Zen 3). For benchmarks only: bench/cpu_mask.py
 * builds this file and re-runs the benchmark with it in LD_PRELOAD.
 *
 * How: Linux's ARCH_SET_CPUID makes the CPUID instruction fault (on CPUs with "cpuid_fault", which
 * /proc/cpuinfo lists). The SIGSEGV handler re-enables CPUID for a moment, executes it, clears the
 * feature bits in leaf 7, writes the registers back and steps over the 2-byte instruction. A
 * SIGSEGV that is not a CPUID gets the default action (a crash, as without this file). The setting
 * is per thread and inherited by threads and child processes created afterwards, so it is switched
 * on from a constructor, before the interpreter starts any thread.
 */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

static void on_sigsegv(int sig, siginfo_t* info, void* context) {
  (void)sig;
  (void)info;
  ucontext_t* uc = (ucontext_t*)context;
  greg_t* regs = uc->uc_mcontext.gregs;
  const unsigned char* ip = (const unsigned char*)regs[REG_RIP];
  if (ip[0] != 0x0F || ip[1] != 0xA2) {
    signal(SIGSEGV, SIG_DFL); /* returning re-runs the faulting instruction: default action */
    return;
  }
  unsigned int leaf = (unsigned int)regs[REG_RAX], subleaf = (unsigned int)regs[REG_RCX];
  unsigned int a, b, c, d;
  syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1);
  __cpuid_count(leaf, subleaf, a, b, c, d);
  syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
  if (leaf == 7 && subleaf == 0) {
    /* AVX512F, DQ, IFMA, PF, ER, CD, BW, VL */
    b &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) |
           (1u << 30) | (1u << 31));
    /* AVX512_VBMI, VBMI2, VNNI, BITALG, VPOPCNTDQ */
    c &= ~((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14));
    /* AVX512_4VNNIW, 4FMAPS, VP2INTERSECT, AMX-BF16, AVX512_FP16, AMX-TILE, AMX-INT8 */
    d &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) | (1u << 25));
  }
  if (leaf == 7 && subleaf == 1) a &= ~((1u << 4) | (1u << 5)); /* AVX-VNNI, AVX512_BF16 */
  regs[REG_RAX] = a;
  regs[REG_RBX] = b;
  regs[REG_RCX] = c;
  regs[REG_RDX] = d;
  regs[REG_RIP] += 2;
}

__attribute__((constructor)) static void hide_avx512_on_load(void) {
  struct sigaction action;
  memset(&action, 0, sizeof action);
  action.sa_sigaction = on_sigsegv;
  action.sa_flags = SA_SIGINFO;
  sigemptyset(&action.sa_mask);
  if (sigaction(SIGSEGV, &action, 0) == 0) syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
}
