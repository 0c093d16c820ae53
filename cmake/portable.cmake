# How the addon links the libraries it uses. With EBPF_LEAK_STATIC (how `npm run build` and the
# prebuilt binaries in prebuilds/ are made, on Debian 12 with scripts/setup.sh's packages) the .node
# needs nothing from the user's system but glibc and libgcc_s, and no glibc symbol version newer than 2.28
# (native/compat/glibc_compat.c; docs/install.md). Without it the shared libraries found by pkg-config and
# find_package are linked: fine for a build that only runs where it was built (a source build).
# Sets EBPF_LEAK_ELF_LIBS and X86_DECODER.
option(EBPF_LEAK_STATIC "Link libelf, libdw, Zydis, their compression libraries and libstdc++ statically" OFF)

if(NOT EBPF_LEAK_STATIC)
  set(EBPF_LEAK_ELF_LIBS PkgConfig::LIBDW PkgConfig::LIBELF PkgConfig::ZLIB)
  if(BPF_ARCH STREQUAL "x86")
    find_package(zydis REQUIRED)
    set(X86_DECODER Zydis::Zydis)
  endif()
  return()
endif()

set(EBPF_LEAK_STATIC_ARCHIVES libdw.a libelf.a libz.a libbz2.a liblzma.a)
foreach(archive ${EBPF_LEAK_STATIC_ARCHIVES})
  string(MAKE_C_IDENTIFIER ${archive} var)
  find_library(EBPF_LEAK_${var} NAMES ${archive})
  if(NOT EBPF_LEAK_${var})
    message(FATAL_ERROR "EBPF_LEAK_STATIC needs ${archive} (Debian: libdw-dev libelf-dev zlib1g-dev libbz2-dev liblzma-dev)")
  endif()
endforeach()

# Sources of Debian's own packages (the versions its -dev packages were built from), for the parts
# whose Debian archives cannot go into a shared object.
set(DEBIAN_POOL "http://deb.debian.org/debian/pool/main" CACHE STRING "Debian archive for the source packages")
set(EBPF_LEAK_SOURCES_DIR ${CMAKE_CURRENT_BINARY_DIR}/third_party)
function(debian_source name url sha256 out_var)
  set(tarball ${EBPF_LEAK_SOURCES_DIR}/${name})
  if(NOT EXISTS ${tarball})
    file(DOWNLOAD ${DEBIAN_POOL}/${url} ${tarball} EXPECTED_HASH SHA256=${sha256} STATUS status)
    list(GET status 0 code)
    if(NOT code EQUAL 0)
      file(REMOVE ${tarball})
      message(FATAL_ERROR "could not download ${DEBIAN_POOL}/${url}: ${status}")
    endif()
  endif()
  set(dir ${EBPF_LEAK_SOURCES_DIR}/${name}.d)
  if(NOT EXISTS ${dir})
    file(ARCHIVE_EXTRACT INPUT ${tarball} DESTINATION ${dir})
  endif()
  file(GLOB top LIST_DIRECTORIES true ${dir}/*)
  set(${out_var} ${top} PARENT_SCOPE)
endfunction()

# --- elfutils: Debian's libdw.a and libelf.a keep their error codes and libdw's per-thread allocator
# slot in local-exec TLS, which no shared object may use. Those four files are compiled again from
# the same release, position independent, and replace their members in copies of the archives.
execute_process(COMMAND ${PKG_CONFIG_EXECUTABLE} --modversion libdw OUTPUT_VARIABLE LIBDW_VERSION
  OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT LIBDW_VERSION STREQUAL "0.188")
  message(FATAL_ERROR "EBPF_LEAK_STATIC is set up for Debian 12's elfutils 0.188, not ${LIBDW_VERSION}")
endif()
debian_source(elfutils_0.188.orig.tar.bz2 e/elfutils/elfutils_0.188.orig.tar.bz2
  fb8b0e8d0802005b9a309c60c1d8de32dd2951b56f0c3a3cb56d21ce01595dff ELFUTILS_SRC)
# What Debian's configure chose for these files (the struct layouts libdw_alloc.c reads depend on
# USE_LOCKS); test/portable-binaries.test.ts compares the code with Debian's objects.
file(WRITE ${EBPF_LEAK_SOURCES_DIR}/elfutils-config/config.h [=[
#define _GNU_SOURCE 1
#define USE_LOCKS 1
#define HAVE_VISIBILITY 1
#define HAVE_STDATOMIC_H 1
#define HAVE_DECL_MEMPCPY 1
#define HAVE_DECL_POWEROF2 1
#define HAVE_DECL_REALLOCARRAY 1
#define HAVE_DECL_RAWMEMCHR 1
#define HAVE_ERROR_H 1
#define HAVE_ERR_H 1
#define HAVE_GCC_STRUCT 1
#define HAVE_FALLTHROUGH 1
#define STRERROR_R_CHAR_P 1
#define ENABLE_NLS 1
#define PACKAGE "elfutils"
#define PACKAGE_NAME "elfutils"
#define LOCALEDIR "/usr/share/locale"
#include <eu-config.h>
]=])
set(ELFUTILS_TLS_MEMBERS dwarf_error dwfl_error libdw_alloc elf_error)
add_library(elfutils_tls STATIC ${ELFUTILS_SRC}/libdw/dwarf_error.c ${ELFUTILS_SRC}/libdwfl/dwfl_error.c
  ${ELFUTILS_SRC}/libdw/libdw_alloc.c ${ELFUTILS_SRC}/libelf/elf_error.c)
target_compile_definitions(elfutils_tls PRIVATE HAVE_CONFIG_H)
target_compile_options(elfutils_tls PRIVATE -std=gnu11 -w)
target_include_directories(elfutils_tls PRIVATE ${EBPF_LEAK_SOURCES_DIR}/elfutils-config ${ELFUTILS_SRC}
  ${ELFUTILS_SRC}/lib ${ELFUTILS_SRC}/libelf ${ELFUTILS_SRC}/libdw ${ELFUTILS_SRC}/libdwfl
  ${ELFUTILS_SRC}/libebl ${ELFUTILS_SRC}/libdwelf)
set(ELFUTILS_ARCHIVES)
foreach(lib dw elf)
  set(copy ${CMAKE_CURRENT_BINARY_DIR}/lib${lib}_linkable.a)
  add_custom_command(OUTPUT ${copy}
    COMMAND ${CMAKE_COMMAND} -E copy ${EBPF_LEAK_lib${lib}_a} ${copy}
    COMMAND ${CMAKE_AR} d ${copy} dwarf_error.o dwfl_error.o libdw_alloc.o elf_error.o
    DEPENDS ${EBPF_LEAK_lib${lib}_a}
    COMMENT "Preparing lib${lib}.a for a shared object")
  list(APPEND ELFUTILS_ARCHIVES ${copy})
endforeach()
# libbz2.a's standard streams point at hidden variables of ours (native/compat/bz2_stdio.cc), as libbpf's
# stderr does (CMakeLists.txt).
set(LIBBZ2_LINKABLE ${CMAKE_CURRENT_BINARY_DIR}/libbz2_linkable.a)
add_custom_command(OUTPUT ${LIBBZ2_LINKABLE}
  COMMAND ${OBJCOPY} --redefine-sym stdin=ebpf_leak_bz2_stdin --redefine-sym stdout=ebpf_leak_bz2_stdout
          --redefine-sym stderr=ebpf_leak_bz2_stderr ${EBPF_LEAK_libbz2_a} ${LIBBZ2_LINKABLE}
  DEPENDS ${EBPF_LEAK_libbz2_a}
  COMMENT "Preparing libbz2.a for a shared object")
add_custom_target(elfutils_linkable DEPENDS ${ELFUTILS_ARCHIVES} ${LIBBZ2_LINKABLE})
add_dependencies(ebpf_leak elfutils_linkable)

# libdw.a before libelf.a before the compression libraries both of them read with.
set(EBPF_LEAK_ELF_LIBS ${ELFUTILS_ARCHIVES} elfutils_tls ${EBPF_LEAK_libz_a} ${LIBBZ2_LINKABLE}
  ${EBPF_LEAK_liblzma_a})

# --- Zydis: Debian ships only libZydis.so; the same release is built here as a static library.
if(BPF_ARCH STREQUAL "x86")
  debian_source(zydis_4.0.0.orig.tar.gz z/zydis/zydis_4.0.0.orig.tar.gz
    e990107f80c62afc1deb51de230023a1098db801b8ea6bf483e296d45459e234 ZYDIS_SRC)
  file(GLOB ZYDIS_SOURCES ${ZYDIS_SRC}/src/*.c)
  add_library(zydis_static STATIC ${ZYDIS_SOURCES})
  target_compile_definitions(zydis_static PUBLIC ZYDIS_STATIC_BUILD ZYCORE_STATIC_BUILD)
  target_compile_options(zydis_static PRIVATE -w)
  # Zycore's headers from Debian's libzycore-dev; Zydis uses none of its code.
  target_include_directories(zydis_static PUBLIC ${ZYDIS_SRC}/include PRIVATE ${ZYDIS_SRC}/src)
  set(X86_DECODER zydis_static)
endif()

# libstdc++ is linked statically (its symbol versions follow GCC 12); libgcc_s stays shared, as the
# unwinder of the user's system knows how to find the frames of its glibc.
target_link_options(ebpf_leak PRIVATE -static-libstdc++)
# glibc functions whose default version is newer than GLIBC_2.28 (native/compat/glibc_compat.c);
# test/portable-binaries.test.ts fails when a new one appears.
target_sources(ebpf_leak PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/native/compat/glibc_compat.c)
set_source_files_properties(${CMAKE_CURRENT_SOURCE_DIR}/native/compat/glibc_compat.c PROPERTIES COMPILE_OPTIONS -fvisibility=hidden)
foreach(fn pthread_create pthread_detach pthread_join pthread_once __pthread_key_create
    pthread_setname_np pthread_rwlock_init pthread_rwlock_destroy pthread_rwlock_rdlock
    pthread_rwlock_tryrdlock pthread_rwlock_wrlock pthread_rwlock_unlock dlopen dlsym dlclose
    fstat fstat64 arc4random posix_spawn_file_actions_addchdir_np pthread_key_create pthread_key_delete
    pthread_getspecific pthread_setspecific pthread_cond_clockwait)
  target_link_options(ebpf_leak PRIVATE -Wl,--wrap=${fn})
endforeach()
