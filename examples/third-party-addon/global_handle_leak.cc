// Leaks one V8 global handle per call to keep(), and allocates nothing else per call: the slots
// are allocated once, when the module loads (and never destroyed: a v8::Global must not be reset
// after V8 is gone, at exit). What is left behind is only V8's global-handle storage, which V8 allocates
// in blocks and never frees, the same memory a correct addon's short-lived handles reuse.
#include <node.h>
#include <v8.h>

namespace {

constexpr int kSlots = 1 << 20;
v8::Global<v8::Value>* slots = nullptr;
int used = 0;

void Keep(const v8::FunctionCallbackInfo<v8::Value>& info) {
  v8::Isolate* isolate = info.GetIsolate();
  if (used < kSlots) slots[used++].Reset(isolate, info[0]);
  info.GetReturnValue().Set(used);
}

void Init(v8::Local<v8::Object> exports) {
  if (slots == nullptr) slots = new v8::Global<v8::Value>[kSlots];
  NODE_SET_METHOD(exports, "keep", Keep);
}

}  // namespace

NODE_MODULE(NODE_GYP_MODULE_NAME, Init)
