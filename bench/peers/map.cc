// The bench's C++ workload (bench/peers.js, `map`): a std::map<std::string, int> with N keys
// (default 500,000) inserted in a fixed pseudo-random order, looked up, half erased, then
// destroyed. Each key is a heap string (longer than the small-string buffer) and each node a
// heap block, so the program is mostly malloc and free, as ordinary C++ containers are.
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  const unsigned n = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 500000;
  std::vector<unsigned> order(n);
  for (unsigned i = 0; i < n; i++) order[i] = i;
  unsigned long long x = 88172645463325252ULL; // xorshift64: the same order on every run
  for (unsigned i = n; i > 1; i--) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::swap(order[i - 1], order[x % i]);
  }
  std::map<std::string, int> m;
  for (unsigned i : order) m.emplace("a-key-longer-than-sso-" + std::to_string(i), static_cast<int>(i));
  long long sum = 0;
  for (unsigned i = 0; i < n; i++) sum += m.find("a-key-longer-than-sso-" + std::to_string(i))->second;
  for (unsigned i = 0; i < n; i += 2) m.erase("a-key-longer-than-sso-" + std::to_string(order[i]));
  std::printf("%zu %lld\n", m.size(), sum);
  return 0;
}
