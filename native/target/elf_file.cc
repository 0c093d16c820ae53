#include "target/elf_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <gelf.h>
#include <libelf.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "addon/errors.h"
#include "target/target_file.h"

namespace ebpf_leak {

namespace {

struct FoundSymbol {
  uint64_t address = 0;  // st_value
  uint64_t size = 0;
  bool global = false;
};

struct ElfInfo {
  std::string type;  // "exec", "dyn", "other"
  std::string interpreter;
  std::vector<std::string> needed;
  std::string soname;
  std::map<std::string, FoundSymbol> symbols;
  std::map<std::string, uint64_t> offsets;  // file offsets of the found symbols
  // Functions of other modules this file calls through its GOT: name -> the GOT slot's address.
  std::map<std::string, uint64_t> imports;
};

struct ElfCloser {
  void operator()(Elf* e) const { elf_end(e); }
};

// Defined functions named in `wanted` from one symbol table. Versioned duplicates (the same
// name twice) resolve to the GLOBAL one, which is the default version the linker binds to.
void ScanSymbols(Elf* elf, Elf_Scn* scn, const GElf_Shdr& shdr,
                 const std::map<std::string, bool>& wanted, ElfInfo* out) {
  Elf_Data* data = elf_getdata(scn, nullptr);
  if (data == nullptr || shdr.sh_entsize == 0) return;
  size_t count = shdr.sh_size / shdr.sh_entsize;
  for (size_t i = 0; i < count; i++) {
    GElf_Sym sym;
    if (gelf_getsym(data, static_cast<int>(i), &sym) == nullptr) continue;
    if (sym.st_shndx == SHN_UNDEF || sym.st_value == 0) continue;
    int type = GELF_ST_TYPE(sym.st_info);
    if (type != STT_FUNC && type != STT_GNU_IFUNC) continue;
    const char* name = elf_strptr(elf, shdr.sh_link, sym.st_name);
    if (name == nullptr || wanted.find(name) == wanted.end()) continue;
    bool global = GELF_ST_BIND(sym.st_info) == STB_GLOBAL;
    auto it = out->symbols.find(name);
    if (it != out->symbols.end() && (it->second.global || !global)) continue;
    out->symbols[name] = FoundSymbol{sym.st_value, sym.st_size, global};
  }
}

// The GOT slots that hold the named functions once bound (R_X86_64_JUMP_SLOT for PLT calls,
// R_X86_64_GLOB_DAT for -fno-plt calls). A PLT stub jumps through its slot, so a call's target
// stub can be named by the slot its jump reads (lib/probes/operators.ts).
void ScanImports(Elf* elf, Elf_Scn* scn, const GElf_Shdr& shdr, const std::map<std::string, bool>& wanted,
                 ElfInfo* out) {
  constexpr uint32_t kGlobDat = 6, kJumpSlot = 7;  // R_X86_64_*
  Elf_Data* data = elf_getdata(scn, nullptr);
  Elf_Scn* symscn = elf_getscn(elf, shdr.sh_link);
  GElf_Shdr symshdr;
  if (data == nullptr || shdr.sh_entsize == 0 || symscn == nullptr || gelf_getshdr(symscn, &symshdr) == nullptr)
    return;
  Elf_Data* syms = elf_getdata(symscn, nullptr);
  if (syms == nullptr) return;
  for (size_t i = 0; i < shdr.sh_size / shdr.sh_entsize; i++) {
    GElf_Rela rela;
    if (gelf_getrela(data, static_cast<int>(i), &rela) == nullptr) break;
    uint32_t type = GELF_R_TYPE(rela.r_info);
    if (type != kGlobDat && type != kJumpSlot) continue;
    GElf_Sym sym;
    if (gelf_getsym(syms, static_cast<int>(GELF_R_SYM(rela.r_info)), &sym) == nullptr) continue;
    const char* name = elf_strptr(elf, symshdr.sh_link, sym.st_name);
    if (name == nullptr || wanted.find(name) == wanted.end()) continue;
    out->imports[name] = rela.r_offset;
  }
}

bool Inspect(const std::string& path, const std::vector<std::string>& names,
             const std::vector<std::string>& import_names, ElfInfo* out, NativeError* error) {
  elf_version(EV_CURRENT);  // libelf refuses to work until told the version; cheap to repeat
  struct stat st;
  std::string why;
  int fd = OpenTargetFile(path, &st, &why);
  if (fd < 0) {
    int err = errno;
    *error = {TargetFileErrorCode(err), why, err};
    return false;
  }
  // Read, not mapped: a file truncated while we parse it gives read errors, not SIGBUS.
  std::unique_ptr<Elf, ElfCloser> elf(elf_begin(fd, ELF_C_READ, nullptr));
  auto fail = [&](const std::string& why) {
    *error = {"ELEAK_LIB_NOT_FOUND", path + " is not a usable ELF file: " + why, 0};
    return false;
  };
  if (!elf || elf_kind(elf.get()) != ELF_K_ELF) {
    close(fd);
    return fail(elf_errmsg(-1));
  }
  GElf_Ehdr ehdr;
  if (gelf_getehdr(elf.get(), &ehdr) == nullptr) {
    close(fd);
    return fail(elf_errmsg(-1));
  }
  out->type = ehdr.e_type == ET_EXEC ? "exec" : ehdr.e_type == ET_DYN ? "dyn" : "other";
  // A truncated file (or a hostile one) whose tables lie past its end.
  auto past_end = [&](uint64_t offset, uint64_t count, uint64_t entsize) {
    uint64_t bytes, end;
    return __builtin_mul_overflow(count, entsize, &bytes) || __builtin_add_overflow(offset, bytes, &end) ||
           end > static_cast<uint64_t>(st.st_size);
  };
  size_t phcount = 0, shcount = 0;
  if (elf_getphdrnum(elf.get(), &phcount) != 0 || elf_getshdrnum(elf.get(), &shcount) != 0 ||
      past_end(ehdr.e_phoff, phcount, ehdr.e_phentsize) || past_end(ehdr.e_shoff, shcount, ehdr.e_shentsize)) {
    close(fd);
    return fail("it is truncated: its program or section headers end past its " + std::to_string(st.st_size) +
                " bytes");
  }

  size_t phnum = 0;
  elf_getphdrnum(elf.get(), &phnum);
  std::vector<GElf_Phdr> loads;
  for (size_t i = 0; i < phnum; i++) {
    GElf_Phdr ph;
    if (gelf_getphdr(elf.get(), static_cast<int>(i), &ph) == nullptr) continue;
    if (ph.p_type == PT_LOAD) loads.push_back(ph);
    if (ph.p_type == PT_INTERP) {
      if (ph.p_filesz > 0 && ph.p_filesz <= 4096) {
        std::string buf(ph.p_filesz, '\0');
        if (pread(fd, buf.data(), buf.size(), static_cast<off_t>(ph.p_offset)) == static_cast<ssize_t>(buf.size()))
          out->interpreter.assign(buf.c_str());
      }
    }
  }

  std::map<std::string, bool> wanted, wanted_imports;
  for (const auto& n : names) wanted[n] = true;
  for (const auto& n : import_names) wanted_imports[n] = true;
  // .dynsym first: it is what other modules bind to. .symtab only adds what is missing (a
  // static binary's malloc, say).
  for (int pass = 0; pass < 2; pass++) {
    Elf_Scn* scn = nullptr;
    while ((scn = elf_nextscn(elf.get(), scn)) != nullptr) {
      GElf_Shdr shdr;
      if (gelf_getshdr(scn, &shdr) == nullptr) continue;
      if (pass == 0 && shdr.sh_type == SHT_DYNAMIC) {
        Elf_Data* data = elf_getdata(scn, nullptr);
        if (data == nullptr || shdr.sh_entsize == 0) continue;
        for (size_t i = 0; i < shdr.sh_size / shdr.sh_entsize; i++) {
          GElf_Dyn dyn;
          if (gelf_getdyn(data, static_cast<int>(i), &dyn) == nullptr) break;
          if (dyn.d_tag != DT_NEEDED && dyn.d_tag != DT_SONAME) continue;
          const char* s = elf_strptr(elf.get(), shdr.sh_link, dyn.d_un.d_val);
          if (s == nullptr) continue;
          if (dyn.d_tag == DT_NEEDED) out->needed.emplace_back(s);
          else out->soname = s;
        }
      }
      if (pass == 0 && shdr.sh_type == SHT_RELA && !wanted_imports.empty() && ehdr.e_machine == EM_X86_64)
        ScanImports(elf.get(), scn, shdr, wanted_imports, out);
      if ((pass == 0 && shdr.sh_type == SHT_DYNSYM) || (pass == 1 && shdr.sh_type == SHT_SYMTAB)) {
        std::map<std::string, bool> missing;
        for (const auto& w : wanted)
          if (out->symbols.find(w.first) == out->symbols.end()) missing.insert(w);
        ScanSymbols(elf.get(), scn, shdr, missing, out);
      }
    }
  }

  // A uprobe is placed by file offset: find the loadable segment holding each address.
  for (const auto& s : out->symbols) {
    for (const auto& ph : loads) {
      if (s.second.address >= ph.p_vaddr && s.second.address < ph.p_vaddr + ph.p_filesz) {
        out->offsets[s.first] = s.second.address - ph.p_vaddr + ph.p_offset;
        break;
      }
    }
  }
  elf.reset();
  close(fd);
  return true;
}

}  // namespace

Napi::Value ReadElf(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsArray())
    throw Napi::TypeError::New(env, "readElf(path: string, symbols: string[], imports?: string[])");
  std::string path = info[0].As<Napi::String>();
  auto strings = [](const Napi::Value& v) {
    std::vector<std::string> out;
    if (!v.IsArray()) return out;
    Napi::Array list = v.As<Napi::Array>();
    for (uint32_t i = 0; i < list.Length(); i++) out.push_back(list.Get(i).ToString());
    return out;
  };
  std::vector<std::string> names = strings(info[1]);
  std::vector<std::string> import_names = info.Length() > 2 ? strings(info[2]) : std::vector<std::string>{};

  ElfInfo elf_info;
  NativeError error;
  if (!Inspect(path, names, import_names, &elf_info, &error)) throw ToJsError(env, error);

  Napi::Object result = Napi::Object::New(env);
  result.Set("type", elf_info.type);
  result.Set("interpreter", elf_info.interpreter.empty() ? env.Null()
                                                          : Napi::String::New(env, elf_info.interpreter));
  result.Set("soname", elf_info.soname.empty() ? env.Null() : Napi::String::New(env, elf_info.soname));
  Napi::Array needed = Napi::Array::New(env, elf_info.needed.size());
  for (size_t i = 0; i < elf_info.needed.size(); i++) needed.Set(i, elf_info.needed[i]);
  result.Set("needed", needed);
  Napi::Object symbols = Napi::Object::New(env);
  for (const auto& s : elf_info.symbols) {
    auto off = elf_info.offsets.find(s.first);
    if (off == elf_info.offsets.end()) continue;  // not in a loadable segment: cannot probe
    Napi::Object sym = Napi::Object::New(env);
    sym.Set("address", Napi::Number::New(env, static_cast<double>(s.second.address)));
    sym.Set("offset", Napi::Number::New(env, static_cast<double>(off->second)));
    sym.Set("size", Napi::Number::New(env, static_cast<double>(s.second.size)));
    symbols.Set(s.first, sym);
  }
  result.Set("symbols", symbols);
  Napi::Object imports = Napi::Object::New(env);
  for (const auto& i : elf_info.imports) imports.Set(i.first, Napi::Number::New(env, static_cast<double>(i.second)));
  result.Set("imports", imports);
  return result;
}

}  // namespace ebpf_leak
