/* Test-harness stand-in for bcryptprimitives.dll under Wine 8.0, which lacks ProcessPrng
 * (Rust's standard library on Windows takes its random bytes from it). Built by
 * scripts/wine-test.sh and put beside the test executables only: never shipped. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length); /* RtlGenRandom, advapi32 */

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length) {
    while (length > 0) {
        ULONG n = length > 0x7fffffff ? 0x7fffffff : (ULONG)length;
        if (!SystemFunction036(data, n)) return FALSE;
        data += n;
        length -= n;
    }
    return TRUE;
}
