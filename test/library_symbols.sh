#!/usr/bin/env bash
# library_symbols.sh — what the shared library imports must not include a call that a library
# living in other people's processes and threads may not make (PITFALLS: "library code that
# exits"; §5: no exit() path):
#
#   exit _exit _Exit quick_exit      ending the process is the application's decision
#   strerror strsignal               not thread-safe (the library uses strerrordesc_np)
#   gmtime localtime ctime asctime   not reentrant (gmtime_r)
#   strtok rand                      hidden state shared by every thread
#   signal                           unportable semantics; sigaction
#   getaddrinfo gethostbyname*       block a loop thread for seconds (the c-ares resolver)
#   getservbyname system popen       the same, or a fork under the application's feet
#   sleep usleep select perror puts printf
#                                    a loop never sleeps; select stops at FD_SETSIZE; the
#                                    library does not write to the process's stdout
#
#   test/library_symbols.sh build/lib/libioloop.so      (meson test library_symbols runs it)
#
# Exit status: 0 when none is imported, 1 (naming them) otherwise, 77 without nm (binutils).
set -euo pipefail

lib=${1:?usage: library_symbols.sh LIBIOLOOP_SO}
if ! command -v nm >/dev/null; then
    echo "SKIP: nm not installed (apt-get install binutils)"
    exit 77
fi
banned="exit _exit _Exit quick_exit strerror strsignal gmtime localtime ctime asctime strtok
rand signal getaddrinfo gethostbyname gethostbyname2 gethostbyname_r getservbyname system popen
sleep usleep select perror puts printf"

imported=$(nm -D --undefined-only "$lib" | awk '{ sub(/@.*/, "", $2); print $2 }' | sort -u)
[[ -n $imported ]] || { echo "FAIL: nm found no imported symbol in $lib"; exit 1; }
found=()
for sym in $banned; do
    if grep -qx -- "$sym" <<<"$imported"; then
        found+=("$sym")
    fi
done
if ((${#found[@]} > 0)); then
    echo "FAIL: $lib imports ${found[*]}"
    exit 1
fi
echo "ok: $(wc -l <<<"$imported") imported symbols, none of the $(wc -w <<<"$banned") banned"
