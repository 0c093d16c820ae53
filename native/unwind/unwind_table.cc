#include "unwind/unwind_table.h"
#include "target/target_file.h"

#include <dwarf.h>
#include <elfutils/libdw.h>
#include <fcntl.h>
#include <gelf.h>
#include <libelf.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>

namespace ebpf_leak {

namespace {

// x86-64 DWARF register numbers.
constexpr int kRegRbp = 6;
constexpr int kRegRsp = 7;
constexpr int kRegRip = 16;  // the return address column

struct ElfCloser {
  void operator()(Elf* e) const { elf_end(e); }
};
struct CfiCloser {
  void operator()(Dwarf_CFI* c) const { dwarf_cfi_end(c); }
};
struct DwarfCloser {
  void operator()(Dwarf* d) const { dwarf_end(d); }
};

leak_unwind_rule Unsupported() {
  leak_unwind_rule r{};
  r.cfa_type = LEAK_CFA_UNSUPPORTED;
  return r;
}

bool FitsS32(int64_t v) { return v >= INT32_MIN && v <= INT32_MAX; }
bool FitsS16(int64_t v) { return v >= INT16_MIN && v <= INT16_MAX; }

// The rule of one CFI row, in the walker's terms.
leak_unwind_rule Classify(Dwarf_Frame* frame, int ra_reg, bool signal) {
  if (signal || ra_reg != kRegRip) return Unsupported();
  leak_unwind_rule r{};

  // The return address: at CFA - 8 (every x86-64 compiler), or undefined in the outermost frame.
  Dwarf_Op mem[3];
  Dwarf_Op* ops = nullptr;
  size_t nops = 0;
  if (dwarf_frame_register(frame, kRegRip, mem, &ops, &nops) != 0) return Unsupported();
  if (nops == 0) {
    if (ops == nullptr) return Unsupported();  // "same value": not a call frame
    r.cfa_type = LEAK_CFA_END;
    return r;
  }
  if (!(nops == 2 && ops[0].atom == DW_OP_call_frame_cfa && ops[1].atom == DW_OP_plus_uconst &&
        static_cast<int64_t>(ops[1].number) == -8))
    return Unsupported();

  // The CFA: a register plus an offset, or the DRAP form *(rbp + off).
  if (dwarf_frame_cfa(frame, &ops, &nops) != 0 || nops == 0) return Unsupported();
  if (nops == 1 && ops[0].atom == DW_OP_bregx) {
    int64_t off = static_cast<int64_t>(ops[0].number2);
    if (!FitsS32(off)) return Unsupported();
    r.cfa_off = static_cast<int32_t>(off);
    if (ops[0].number == kRegRsp)
      r.cfa_type = LEAK_CFA_RSP;
    else if (ops[0].number == kRegRbp)
      r.cfa_type = LEAK_CFA_RBP;
    else
      return Unsupported();
  } else if (nops == 2 && ops[0].atom == DW_OP_breg0 + kRegRbp && ops[1].atom == DW_OP_deref) {
    int64_t off = static_cast<int64_t>(ops[0].number);
    if (!FitsS32(off)) return Unsupported();
    r.cfa_off = static_cast<int32_t>(off);
    r.cfa_type = LEAK_CFA_DEREF_RBP;
  } else {
    return Unsupported();  // PLT entries' expressions, hand-written asm
  }

  // The caller's rbp.
  r.rbp_type = LEAK_RBP_UNDEFINED;
  if (dwarf_frame_register(frame, kRegRbp, mem, &ops, &nops) == 0) {
    if (nops == 0) {
      r.rbp_type = ops == nullptr ? LEAK_RBP_SAME : LEAK_RBP_UNDEFINED;
    } else if (nops == 1 && ops[0].atom == DW_OP_call_frame_cfa) {
      r.rbp_type = LEAK_RBP_AT_CFA;
    } else if (nops == 2 && ops[0].atom == DW_OP_call_frame_cfa &&
               ops[1].atom == DW_OP_plus_uconst &&
               FitsS16(static_cast<int64_t>(ops[1].number))) {
      r.rbp_type = LEAK_RBP_AT_CFA;
      r.rbp_off = static_cast<int16_t>(static_cast<int64_t>(ops[1].number));
    } else if (nops == 1 && ops[0].atom == DW_OP_breg0 + kRegRbp &&
               FitsS16(static_cast<int64_t>(ops[0].number))) {
      r.rbp_type = LEAK_RBP_AT_RBP;
      r.rbp_off = static_cast<int16_t>(static_cast<int64_t>(ops[0].number));
    }
  }
  return r;
}

bool SameRule(const leak_unwind_rule& a, const leak_unwind_rule& b) {
  return a.cfa_type == b.cfa_type && a.cfa_off == b.cfa_off && a.rbp_type == b.rbp_type &&
         a.rbp_off == b.rbp_off;
}

uint64_t ReadULeb(const uint8_t*& p, const uint8_t* end) {
  uint64_t v = 0;
  int shift = 0;
  while (p < end) {
    uint8_t b = *p++;
    if (shift < 64) v |= static_cast<uint64_t>(b & 0x7f) << shift;
    shift += 7;
    if (!(b & 0x80)) break;
  }
  return v;
}

int64_t ReadSLeb(const uint8_t*& p, const uint8_t* end) {
  int64_t v = 0;
  int shift = 0;
  uint8_t b = 0;
  while (p < end) {
    b = *p++;
    if (shift < 64) v |= static_cast<int64_t>(b & 0x7f) << shift;
    shift += 7;
    if (!(b & 0x80)) break;
  }
  if (shift < 64 && (b & 0x40)) v |= -(static_cast<int64_t>(1) << shift);
  return v;
}

// A DW_EH_PE-encoded pointer (the FDE's initial location and range). `at` is the address of the
// field, for pc-relative encodings. libdw decodes CFI instructions; this only reads where an FDE
// starts, which libdw's public API does not hand out.
bool ReadEncoded(uint8_t enc, const uint8_t*& p, const uint8_t* end, uint64_t at, bool value_only,
                 uint64_t* out) {
  if (enc == DW_EH_PE_omit) return false;
  uint64_t v = 0;
  auto take = [&](size_t n) {
    if (static_cast<size_t>(end - p) < n) return false;
    uint64_t x = 0;
    memcpy(&x, p, n);
    p += n;
    v = x;
    return true;
  };
  switch (enc & 0x0f) {
    case DW_EH_PE_absptr:
    case DW_EH_PE_udata8:
    case DW_EH_PE_sdata8:
      if (!take(8)) return false;
      break;
    case DW_EH_PE_uleb128:
      v = ReadULeb(p, end);
      break;
    case DW_EH_PE_sleb128:
      v = static_cast<uint64_t>(ReadSLeb(p, end));
      break;
    case DW_EH_PE_udata2:
      if (!take(2)) return false;
      break;
    case DW_EH_PE_sdata2:
      if (!take(2)) return false;
      v = static_cast<uint64_t>(static_cast<int64_t>(static_cast<int16_t>(v)));
      break;
    case DW_EH_PE_udata4:
      if (!take(4)) return false;
      break;
    case DW_EH_PE_sdata4:
      if (!take(4)) return false;
      v = static_cast<uint64_t>(static_cast<int64_t>(static_cast<int32_t>(v)));
      break;
    default:
      return false;
  }
  if (!value_only) {
    switch (enc & 0x70) {
      case DW_EH_PE_absptr:
        break;
      case DW_EH_PE_pcrel:
        v += at;
        break;
      default:
        return false;  // textrel/datarel/funcrel: not used for FDE locations on x86-64
    }
  }
  *out = v;
  return true;
}

// The FDE pointer encoding a CIE's augmentation sets ('R'); absptr when it has none.
uint8_t FdeEncoding(const Dwarf_CIE& cie) {
  const char* a = cie.augmentation;
  if (a == nullptr || a[0] != 'z' || cie.augmentation_data == nullptr) return DW_EH_PE_absptr;
  const uint8_t* p = cie.augmentation_data;
  const uint8_t* end = p + cie.augmentation_data_size;
  for (const char* c = a + 1; *c && p < end; c++) {
    switch (*c) {
      case 'R':
        return *p;
      case 'P': {
        uint8_t enc = *p++;
        uint64_t ignored;
        if (!ReadEncoded(enc & 0x7f, p, end, 0, true, &ignored)) return DW_EH_PE_omit;
        break;
      }
      case 'L':
        p++;
        break;
      case 'S':
      case 'B':
        break;
      default:
        return DW_EH_PE_omit;
    }
  }
  return DW_EH_PE_absptr;
}

struct Segment {
  uint64_t vaddr, filesz, offset;
};

struct RawRow {
  uint64_t vaddr;
  leak_unwind_rule rule;
  bool gap;  // the end of an FDE's range
};

// Every row of every FDE in one CFI section. `eh_frame`: .eh_frame (else .debug_frame).
void ReadRows(Elf* elf, Dwarf_CFI* cfi, Elf_Data* data, uint64_t section_addr, bool eh_frame,
              std::vector<RawRow>* rows, UnwindTable* table) {
  const unsigned char* ident = reinterpret_cast<const unsigned char*>(elf_getident(elf, nullptr));
  const uint8_t* base = static_cast<const uint8_t*>(data->d_buf);
  std::map<Dwarf_Off, uint8_t> encodings;  // CIE offset -> FDE pointer encoding
  Dwarf_Off offset = 0, next = 0;
  Dwarf_CFI_Entry entry;
  while (dwarf_next_cfi(ident, data, eh_frame, offset, &next, &entry) == 0) {
    Dwarf_Off this_offset = offset;
    offset = next;
    if (entry.CIE_id == LIBDW_CIE_ID) {
      encodings[this_offset] = eh_frame ? FdeEncoding(entry.cie) : uint8_t{DW_EH_PE_absptr};
      continue;
    }
    auto cie = encodings.find(entry.fde.CIE_pointer);
    uint8_t enc = DW_EH_PE_absptr;
    if (cie != encodings.end()) {
      enc = cie->second;
    } else {
      // A CIE after its FDE (allowed): read it now.
      Dwarf_Off cie_next;
      Dwarf_CFI_Entry cie_entry;
      if (dwarf_next_cfi(ident, data, eh_frame, entry.fde.CIE_pointer, &cie_next, &cie_entry) != 0 ||
          cie_entry.CIE_id != LIBDW_CIE_ID)
        continue;
      enc = eh_frame ? FdeEncoding(cie_entry.cie) : uint8_t{DW_EH_PE_absptr};
      encodings[entry.fde.CIE_pointer] = enc;
    }
    const uint8_t* p = entry.fde.start;
    const uint8_t* end = entry.fde.end;
    uint64_t start = 0, range = 0;
    if (!ReadEncoded(enc, p, end, section_addr + static_cast<uint64_t>(p - base), false, &start) ||
        !ReadEncoded(enc & 0x0f, p, end, 0, true, &range) || range == 0)
      continue;
    table->fdes++;
    bool uses_rbp = false;
    uint64_t pc = start;
    const uint64_t limit = start + range;
    // A row at a time: dwarf_frame_info gives the range each one covers.
    for (int guard = 0; pc < limit && guard < 1 << 20; guard++) {
      Dwarf_Frame* frame = nullptr;
      if (dwarf_cfi_addrframe(cfi, pc, &frame) != 0) break;
      Dwarf_Addr row_start = pc, row_end = limit;
      bool signal = false;
      int ra_reg = dwarf_frame_info(frame, &row_start, &row_end, &signal);
      leak_unwind_rule rule = Classify(frame, ra_reg, signal);
      free(frame);
      if (rule.cfa_type == LEAK_CFA_RBP || rule.cfa_type == LEAK_CFA_DEREF_RBP) uses_rbp = true;
      rows->push_back({pc, rule, false});
      if (row_end <= pc) break;
      pc = row_end;
    }
    if (uses_rbp) table->rbp_fdes++;
    rows->push_back({limit, leak_unwind_rule{}, true});
  }
}

Elf_Scn* FindSection(Elf* elf, const char* name, GElf_Shdr* out) {
  size_t shstrndx;
  if (elf_getshdrstrndx(elf, &shstrndx) != 0) return nullptr;
  Elf_Scn* scn = nullptr;
  while ((scn = elf_nextscn(elf, scn)) != nullptr) {
    GElf_Shdr shdr;
    if (gelf_getshdr(scn, &shdr) == nullptr) continue;
    const char* n = elf_strptr(elf, shstrndx, shdr.sh_name);
    if (n != nullptr && strcmp(n, name) == 0 && shdr.sh_type != SHT_NOBITS) {
      *out = shdr;
      return scn;
    }
  }
  return nullptr;
}

std::shared_ptr<UnwindTable> Build(int fd, off_t file_size) {
  auto table = std::make_shared<UnwindTable>();
  elf_version(EV_CURRENT);
  // ELF_C_READ, not _MMAP: a file truncated since it was mapped gives read errors, not SIGBUS.
  std::unique_ptr<Elf, ElfCloser> elf(elf_begin(fd, ELF_C_READ, nullptr));
  if (!elf || elf_kind(elf.get()) != ELF_K_ELF) {
    table->error = "not an ELF file";
    return table;
  }
  GElf_Ehdr ehdr;
  if (gelf_getehdr(elf.get(), &ehdr) == nullptr || ehdr.e_machine != EM_X86_64) {
    table->error = "not an x86-64 ELF file";
    return table;
  }
  // Executable segments: CFI addresses are ELF addresses, rows are file offsets.
  std::vector<Segment> segments;
  size_t phnum = 0;
  if (elf_getphdrnum(elf.get(), &phnum) == 0) {
    for (size_t i = 0; i < phnum; i++) {
      GElf_Phdr ph;
      if (gelf_getphdr(elf.get(), static_cast<int>(i), &ph) == nullptr) continue;
      if (ph.p_type == PT_LOAD && (ph.p_flags & PF_X) && ph.p_offset + ph.p_filesz <= static_cast<uint64_t>(file_size))
        segments.push_back({ph.p_vaddr, ph.p_filesz, ph.p_offset});
    }
  }
  if (segments.empty()) {
    table->error = "no executable segment";
    return table;
  }

  std::vector<RawRow> raw;
  GElf_Shdr shdr;
  if (Elf_Scn* scn = FindSection(elf.get(), ".eh_frame", &shdr);
      scn != nullptr && shdr.sh_offset + shdr.sh_size <= static_cast<uint64_t>(file_size)) {
    Elf_Data* data = elf_getdata(scn, nullptr);
    std::unique_ptr<Dwarf_CFI, CfiCloser> cfi(dwarf_getcfi_elf(elf.get()));
    if (data != nullptr && cfi) ReadRows(elf.get(), cfi.get(), data, shdr.sh_addr, true, &raw, table.get());
  }
  if (raw.empty()) {
    // No .eh_frame (-fno-asynchronous-unwind-tables): .debug_frame, when the file has it.
    if (Elf_Scn* scn = FindSection(elf.get(), ".debug_frame", &shdr);
        scn != nullptr && shdr.sh_offset + shdr.sh_size <= static_cast<uint64_t>(file_size)) {
      Elf_Data* data = elf_getdata(scn, nullptr);
      std::unique_ptr<Dwarf, DwarfCloser> dwarf(dwarf_begin_elf(elf.get(), DWARF_C_READ, nullptr));
      Dwarf_CFI* cfi = dwarf ? dwarf_getcfi(dwarf.get()) : nullptr;  // owned by `dwarf`
      if (data != nullptr && cfi != nullptr) ReadRows(elf.get(), cfi, data, 0, false, &raw, table.get());
    }
  }
  if (raw.empty()) {
    table->error = "no call frame information";
    return table;
  }
  table->keeps_frame_pointers = table->rbp_fdes * 2 > table->fdes;

  // ELF addresses -> file offsets; rows outside the executable segments are dropped.
  struct OffRow {
    uint64_t off;
    leak_unwind_rule rule;
    bool gap;
  };
  std::vector<OffRow> rows;
  rows.reserve(raw.size());
  for (const RawRow& r : raw) {
    for (const Segment& s : segments) {
      // A gap row may sit exactly at the segment's end.
      if (r.vaddr >= s.vaddr && (r.vaddr < s.vaddr + s.filesz || (r.gap && r.vaddr == s.vaddr + s.filesz))) {
        rows.push_back({r.vaddr - s.vaddr + s.offset, r.rule, r.gap});
        break;
      }
    }
  }
  // By offset; at one offset, a function's first row wins over the previous function's end.
  std::stable_sort(rows.begin(), rows.end(), [](const OffRow& a, const OffRow& b) {
    return a.off != b.off ? a.off < b.off : (a.gap && !b.gap);
  });
  for (size_t i = 0; i < rows.size(); i++) {
    const OffRow& r = rows[i];
    if (i + 1 < rows.size() && rows[i + 1].off == r.off) continue;  // the last at an offset wins
    if (r.off > UINT32_MAX) {
      table->rows.clear();
      table->error = "code beyond 4 GiB into the file";
      return table;
    }
    leak_unwind_rule rule = r.gap ? leak_unwind_rule{} : r.rule;  // gap: LEAK_CFA_NONE
    if (!table->rows.empty() && SameRule(table->rows.back().rule, rule)) continue;
    table->rows.push_back({static_cast<uint32_t>(r.off), rule});
  }
  if (table->rows.empty()) table->error = "no call frame information";
  return table;
}

std::mutex cache_mu;
std::map<std::tuple<uint64_t, uint64_t, int64_t, int64_t, int64_t>, std::shared_ptr<const UnwindTable>>
    cache;

}  // namespace

uint64_t KernelDev(uint64_t st_dev) {
  return (static_cast<uint64_t>(major(st_dev)) << 20) | minor(st_dev);
}

std::shared_ptr<const UnwindTable> GetUnwindTable(int fd) {
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    auto t = std::make_shared<UnwindTable>();
    t->error = "not a regular file";
    return t;
  }
  auto key = std::make_tuple(static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino),
                             static_cast<int64_t>(st.st_size), static_cast<int64_t>(st.st_mtim.tv_sec),
                             static_cast<int64_t>(st.st_mtim.tv_nsec));
  {
    std::lock_guard<std::mutex> lock(cache_mu);
    auto it = cache.find(key);
    if (it != cache.end()) return it->second;
  }
  std::shared_ptr<const UnwindTable> table = Build(fd, st.st_size);
  std::lock_guard<std::mutex> lock(cache_mu);
  cache[key] = table;
  return table;
}

std::shared_ptr<const UnwindTable> GetUnwindTable(const std::string& path) {
  struct stat st;
  std::string error;
  int fd = OpenTargetFile(path, &st, &error);
  if (fd < 0) return nullptr;
  auto table = GetUnwindTable(fd);
  close(fd);
  return table;
}

}  // namespace ebpf_leak
