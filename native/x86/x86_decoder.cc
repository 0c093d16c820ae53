#include "x86/x86_decoder.h"

#include <Zydis/Zydis.h>

#include <cstring>
#include <set>
#include <string>

namespace ebpf_leak {
namespace {

// How an instruction leaves it, in the words of lib/native.ts (X86Flow).
const char* FlowOf(const ZydisDecodedInstruction& insn, const ZydisDecodedOperand* ops) {
  switch (insn.mnemonic) {
    case ZYDIS_MNEMONIC_UD0:
    case ZYDIS_MNEMONIC_UD1:
    case ZYDIS_MNEMONIC_UD2:
      return "exception";
    case ZYDIS_MNEMONIC_XBEGIN:
    case ZYDIS_MNEMONIC_XABORT:
    case ZYDIS_MNEMONIC_XEND:
    case ZYDIS_MNEMONIC_HLT:
      return "other";
    default:
      break;
  }
  const bool direct = insn.operand_count_visible > 0 && ops[0].type == ZYDIS_OPERAND_TYPE_IMMEDIATE &&
                      ops[0].imm.is_relative;
  switch (insn.meta.category) {
    case ZYDIS_CATEGORY_COND_BR:
      return direct ? "conditional-jump" : "other";
    case ZYDIS_CATEGORY_UNCOND_BR:
      return direct ? "jump" : "indirect-jump";
    case ZYDIS_CATEGORY_CALL:
      return direct ? "call" : "indirect-call";
    case ZYDIS_CATEGORY_RET:
    case ZYDIS_CATEGORY_SYSRET:
      return "return";
    case ZYDIS_CATEGORY_INTERRUPT:
    case ZYDIS_CATEGORY_SYSCALL:
      return "interrupt";
    default:
      break;
  }
  // Anything else that writes the instruction pointer (far jumps and the like) does not fall
  // through either, whatever its category.
  for (ZyanU8 i = 0; i < insn.operand_count; ++i) {
    const ZydisDecodedOperand& op = ops[i];
    if (op.type == ZYDIS_OPERAND_TYPE_REGISTER && (op.actions & ZYDIS_OPERAND_ACTION_MASK_WRITE) &&
        (op.reg.value == ZYDIS_REGISTER_RIP || op.reg.value == ZYDIS_REGISTER_EIP || op.reg.value == ZYDIS_REGISTER_IP)) {
      return "other";
    }
  }
  return "next";
}

bool IsRegister(const ZydisDecodedOperand& op, ZydisRegister reg) {
  return op.type == ZYDIS_OPERAND_TYPE_REGISTER && op.reg.value == reg;
}

// `test %rdi,%rdi` or `cmp $0,%rdi`: ZF is set exactly when the first argument is NULL.
bool TestsFirstArgForNull(const ZydisDecodedInstruction& insn, const ZydisDecodedOperand* ops) {
  if (insn.operand_count_visible < 2 || insn.operand_width != 64) return false;
  if (insn.mnemonic == ZYDIS_MNEMONIC_TEST) return IsRegister(ops[0], ZYDIS_REGISTER_RDI) && IsRegister(ops[1], ZYDIS_REGISTER_RDI);
  if (insn.mnemonic == ZYDIS_MNEMONIC_CMP) {
    return IsRegister(ops[0], ZYDIS_REGISTER_RDI) && ops[1].type == ZYDIS_OPERAND_TYPE_IMMEDIATE && ops[1].imm.value.u == 0;
  }
  return false;
}

// GNU objdump's names for the conditional jumps whose Zydis names differ (je for jz, ...): the
// placement reasons read like the disassembly users compare them with.
const char* GnuJccName(ZydisMnemonic m) {
  switch (m) {
    case ZYDIS_MNEMONIC_JZ: return "je";
    case ZYDIS_MNEMONIC_JNZ: return "jne";
    case ZYDIS_MNEMONIC_JNB: return "jae";
    case ZYDIS_MNEMONIC_JNBE: return "ja";
    case ZYDIS_MNEMONIC_JNL: return "jge";
    case ZYDIS_MNEMONIC_JNLE: return "jg";
    default: return nullptr;
  }
}

class Formatter {
 public:
  Formatter() {
    ZydisFormatterInit(&f_, ZYDIS_FORMATTER_STYLE_ATT);
    ZydisFormatterSetProperty(&f_, ZYDIS_FORMATTER_PROP_FORCE_RELATIVE_RIPREL, ZYAN_TRUE);
    ZydisFormatterSetProperty(&f_, ZYDIS_FORMATTER_PROP_HEX_UPPERCASE, ZYAN_FALSE);
    ZydisFormatterSetProperty(&f_, ZYDIS_FORMATTER_PROP_ADDR_PADDING_ABSOLUTE, ZYDIS_PADDING_DISABLED);
    ZydisFormatterSetProperty(&f_, ZYDIS_FORMATTER_PROP_ADDR_PADDING_RELATIVE, ZYDIS_PADDING_DISABLED);
    ZydisFormatterSetProperty(&f_, ZYDIS_FORMATTER_PROP_DISP_PADDING, ZYDIS_PADDING_DISABLED);
    ZydisFormatterSetProperty(&f_, ZYDIS_FORMATTER_PROP_IMM_PADDING, ZYDIS_PADDING_DISABLED);
  }

  // objdump's spelling: no space after the operand separator.
  std::string Format(const ZydisDecodedInstruction& insn, const ZydisDecodedOperand* ops, ZyanU64 address) const {
    char buffer[256];
    if (ZYAN_FAILED(ZydisFormatterFormatInstruction(&f_, &insn, ops, insn.operand_count_visible, buffer, sizeof buffer,
                                                    address, nullptr))) {
      return "(unformattable)";
    }
    std::string text;
    const char* c = buffer;
    if (const char* gnu = buffer[0] == 'j' ? GnuJccName(insn.mnemonic) : nullptr) {
      text = gnu;
      c = std::strchr(buffer, ' ');
      if (!c) c = buffer + std::strlen(buffer);
    }
    for (; *c; ++c) {
      if (*c == ' ' && c > buffer && c[-1] == ',') continue;
      text += *c;
    }
    return text;
  }

 private:
  ZydisFormatter f_;
};

}  // namespace

Napi::Value DecodeX86(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsTypedArray() || !info[1].IsNumber() || !info[2].IsNumber()) {
    throw Napi::TypeError::New(env, "decodeX86(code: Uint8Array, address: number, detailBytes: number)");
  }
  Napi::Uint8Array code = info[0].As<Napi::Uint8Array>();
  const ZyanU64 address = static_cast<ZyanU64>(info[1].As<Napi::Number>().Int64Value());
  const size_t detail_bytes = static_cast<size_t>(info[2].As<Napi::Number>().Int64Value());

  ZydisDecoder decoder;
  ZydisDecoderInit(&decoder, ZYDIS_MACHINE_MODE_LONG_64, ZYDIS_STACK_WIDTH_64);
  static const Formatter formatter;

  Napi::Array out = Napi::Array::New(env);
  uint32_t n = 0;
  const uint8_t* bytes = code.Data();
  const size_t size = code.ByteLength();
  ZydisDecodedInstruction insn;
  ZydisDecodedOperand ops[ZYDIS_MAX_OPERAND_COUNT];
  for (size_t at = 0; at < size;) {
    const bool detailed = at < detail_bytes;
    const ZyanU64 ip = address + at;
    if (ZYAN_FAILED(ZydisDecoderDecodeFull(&decoder, bytes + at, size - at, &insn, ops))) {
      // Not an instruction (or cut short by the end of the bytes). Past the detailed part it is
      // skipped, as a linear sweep does; in it, the caller stops here.
      if (!detailed) {
        ++at;
        continue;
      }
      Napi::Object record = Napi::Object::New(env);
      record.Set("offset", static_cast<double>(ip));
      record.Set("length", 1.0);
      record.Set("text", "(bad)");
      record.Set("flow", "other");
      record.Set("invalid", true);
      record.Set("writes", Napi::Array::New(env));
      record.Set("testsFirstArgForNull", false);
      record.Set("jumpsIfZero", false);
      out.Set(n++, record);
      break;
    }
    const char* flow = FlowOf(insn, ops);
    at += insn.length;
    if (!detailed && std::strcmp(flow, "next") == 0) continue;
    Napi::Object record = Napi::Object::New(env);
    record.Set("offset", static_cast<double>(ip));
    record.Set("length", static_cast<double>(insn.length));
    std::string text = formatter.Format(insn, ops, ip);
    // AT&T marks an indirect target with '*' (objdump: `jmp *%rax`); Zydis leaves it out.
    if (std::strncmp(flow, "indirect-", 9) == 0) {
      const size_t space = text.find(' ');
      if (space != std::string::npos && text.compare(space + 1, 1, "*") != 0) text.insert(space + 1, "*");
    }
    record.Set("text", text);
    record.Set("flow", flow);
    record.Set("invalid", false);
    ZyanU64 target = 0;
    if (insn.operand_count_visible > 0 && ops[0].type == ZYDIS_OPERAND_TYPE_IMMEDIATE && ops[0].imm.is_relative &&
        ZYAN_SUCCESS(ZydisCalcAbsoluteAddress(&insn, &ops[0], ip, &target))) {
      record.Set("target", static_cast<double>(target));
    }
    // Every register written, explicitly or not (push writes rsp, mul rdx, rep movs rdi/rsi/rcx),
    // by its 64-bit name: a write to edi or dil is one to rdi.
    std::set<std::string> writes;
    for (ZyanU8 i = 0; i < insn.operand_count; ++i) {
      const ZydisDecodedOperand& op = ops[i];
      if (op.type != ZYDIS_OPERAND_TYPE_REGISTER || !(op.actions & ZYDIS_OPERAND_ACTION_MASK_WRITE)) continue;
      ZydisRegister full = ZydisRegisterGetLargestEnclosing(ZYDIS_MACHINE_MODE_LONG_64, op.reg.value);
      const char* name = ZydisRegisterGetString(full == ZYDIS_REGISTER_NONE ? op.reg.value : full);
      if (name) writes.insert(name);
    }
    Napi::Array written = Napi::Array::New(env, writes.size());
    uint32_t w = 0;
    for (const std::string& name : writes) written.Set(w++, name);
    record.Set("writes", written);
    record.Set("testsFirstArgForNull", TestsFirstArgForNull(insn, ops));
    record.Set("jumpsIfZero", std::strcmp(flow, "conditional-jump") == 0 && insn.mnemonic == ZYDIS_MNEMONIC_JZ);
    out.Set(n++, record);
  }
  return out;
}

}  // namespace ebpf_leak
