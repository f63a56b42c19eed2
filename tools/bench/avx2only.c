// LD_PRELOAD shim: the process sees an AVX2/FMA/F16C CPU without AVX-512, VNNI or AMX.
//
// For measuring ONNX Runtime's AVX2-only kernel paths (the ones AMD EPYC Zen 2/3 and Intel before
// Cascade Lake run) on a CPU that has more: Linux CPUID faulting (arch_prctl ARCH_SET_CPUID, the
// `cpuid_fault` flag in /proc/cpuinfo) makes every CPUID instruction trap; the SIGSEGV handler runs the
// real CPUID with faulting briefly off, clears the feature bits, and steps over the instruction. MLAS
// and ORT read CPUID once when they load, so timings are unaffected. The setting is inherited by threads
// and reset by execve. Build: cc -O2 -shared -fPIC -o avx2only.so avx2only.c
#define _GNU_SOURCE
#include <cpuid.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#define ARCH_SET_CPUID 0x1012

static void cpuid_masked(unsigned leaf, unsigned sub, unsigned r[4]) {
  __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
  if (leaf == 7 && sub == 0) {
    // EBX: AVX512F, DQ, IFMA, PF, ER, CD, BW, VL.
    r[1] &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) |
              (1u << 30) | (1u << 31));
    // ECX: AVX512_VBMI, VBMI2, VNNI, BITALG, VPOPCNTDQ.
    r[2] &= ~((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14));
    // EDX: AVX512_4VNNIW, 4FMAPS, VP2INTERSECT, AMX_BF16, AVX512_FP16, AMX_TILE, AMX_INT8.
    r[3] &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) | (1u << 25));
  } else if (leaf == 7 && sub == 1) {
    // EAX: AVX_VNNI, AVX512_BF16, AMX_FP16, AVX_IFMA; EDX: AVX_VNNI_INT8, AVX_NE_CONVERT, AVX_VNNI_INT16.
    r[0] &= ~((1u << 4) | (1u << 5) | (1u << 21) | (1u << 23));
    r[3] &= ~((1u << 4) | (1u << 5) | (1u << 10));
  }
}

static void on_segv(int sig, siginfo_t *info, void *uctx) {
  (void)info;
  ucontext_t *ctx = uctx;
  greg_t *g = ctx->uc_mcontext.gregs;
  const unsigned char *ip = (const unsigned char *)g[REG_RIP];
  if (ip[0] != 0x0f || ip[1] != 0xa2) {
    signal(sig, SIG_DFL);  // a real fault: crash as without the shim
    return;
  }
  unsigned r[4];
  syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1);
  cpuid_masked((unsigned)g[REG_RAX], (unsigned)g[REG_RCX], r);
  syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
  g[REG_RAX] = r[0];
  g[REG_RBX] = r[1];
  g[REG_RCX] = r[2];
  g[REG_RDX] = r[3];
  g[REG_RIP] += 2;
}

__attribute__((constructor)) static void init(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_segv;
  sa.sa_flags = SA_SIGINFO | SA_NODEFER;
  sigaction(SIGSEGV, &sa, NULL);
  if (syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0) {
    perror("avx2only: arch_prctl(ARCH_SET_CPUID) (no cpuid_fault on this CPU?)");
    exit(97);
  }
}
