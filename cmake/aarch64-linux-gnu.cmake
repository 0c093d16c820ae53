# Cross build for linux-arm64 on Debian x86-64 (`npm run build:arm64`, then
# scripts/prebuilds.js): Debian's cross compiler (g++-aarch64-linux-gnu) and the arm64 multiarch
# -dev packages (libbpf-dev:arm64 libelf-dev:arm64 libdw-dev:arm64 zlib1g-dev:arm64 libbz2-dev:arm64
# liblzma-dev:arm64), which put their archives and .pc files in /usr/lib/aarch64-linux-gnu.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
# find_library() looks in /usr/lib/aarch64-linux-gnu, not in the build machine's
# /usr/lib/x86_64-linux-gnu; programs (clang, bpftool, node) are the build machine's.
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)

# pkg-config reads the arm64 .pc files, never the build machine's.
set(ENV{PKG_CONFIG_LIBDIR} /usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig)
set(ENV{PKG_CONFIG_PATH} "")
