// Unit tests of the shared math (csrc/include/adkernels): the online-softmax merge, the
// 0 log 0 convention, and the KD divergence gradients against finite differences, in double,
// plus the Vectorized overloads against the scalar path. Run by ctest.
#include <adkernels/vec_math.h>  // before kd_math.h (overloads for Vectorized)
#include <adkernels/kd_math.h>

#include <cmath>
#include <cstdio>
#include <vector>

using namespace adkernels;

static int failures = 0;
#define EXPECT_NEAR(a, b, tol, what)                                                         \
  do {                                                                                       \
    double _a = (a), _b = (b);                                                               \
    if (!(_a == _b || std::fabs(_a - _b) <= (tol) * (1 + std::fabs(_b)))) {                            \
      std::printf("FAIL %s: %.12g vs %.12g (line %d)\n", what, _a, _b, __LINE__);           \
      ++failures;                                                                            \
    }                                                                                        \
  } while (0)

// Divergence of one row through the shared templates (scaled logits s, t already divided by T).
static void row_div(int64_t div, const std::vector<double>& s, const std::vector<double>& t, double beta,
                    double& value, double& acc_t, double& acc_s) {
  double ms = -INFINITY, ss = 0, mt = -INFINITY, st = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    online_merge(ms, ss, s[i], 1.0);
    online_merge(mt, st, t[i], 1.0);
  }
  double lse_s = ms + std::log(ss), lse_t = mt + std::log(st);
  acc_t = acc_s = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    double lps = s[i] - lse_s, lpt = t[i] - lse_t;
    kd_div_terms(div, std::exp(lps), std::exp(lpt), lps, lpt, beta, 1.0, acc_t, acc_s);
  }
  value = kd_div_value(div, acc_t, acc_s, beta);
}

static void test_gradients() {
  std::vector<double> s = {0.3, -1.2, 2.0, 0.7, -0.4}, t = {1.1, 0.2, -0.5, 0.9, -2.0};
  const double beta = 0.3, h = 1e-6;
  for (int64_t div : {KL, REVERSE_KL, JSD}) {
    double v, at, as;
    row_div(div, s, t, beta, v, at, as);
    double ms = -INFINITY, ss = 0, mt = -INFINITY, st = 0;
    for (size_t i = 0; i < s.size(); ++i) { online_merge(ms, ss, s[i], 1.0); online_merge(mt, st, t[i], 1.0); }
    for (size_t i = 0; i < s.size(); ++i) {
      double lps = s[i] - ms - std::log(ss), lpt = t[i] - mt - std::log(st), ds, dt;
      kd_div_grads(div, std::exp(lps), std::exp(lpt), lps, lpt, beta, 1.0, at, as, ds, dt);
      auto sp = s, sm = s, tp = t, tm = t;
      sp[i] += h; sm[i] -= h; tp[i] += h; tm[i] -= h;
      double vp, vm, a, b;
      row_div(div, sp, t, beta, vp, a, b);
      row_div(div, sm, t, beta, vm, a, b);
      EXPECT_NEAR(ds, (vp - vm) / (2 * h), 1e-6, "d div / d s");
      row_div(div, s, tp, beta, vp, a, b);
      row_div(div, s, tm, beta, vm, a, b);
      EXPECT_NEAR(dt, (vp - vm) / (2 * h), 1e-6, "d div / d t");
    }
  }
}

static void test_online_merge_and_zero_log_zero() {
  double m = -INFINITY, s = 0;
  const double xs[] = {1.0, 700.0, -3.0, 699.5};
  for (double x : xs) online_merge(m, s, x, 1.0);
  double direct = 700.0 + std::log(std::exp(1.0 - 700) + 1 + std::exp(-703.0) + std::exp(-0.5));
  EXPECT_NEAR(m + std::log(s), direct, 1e-14, "online logsumexp");
  double m2 = -INFINITY, s2 = 0;
  online_merge(m2, s2, -double(INFINITY), 0.0);  // merging empty states stays empty, not NaN
  EXPECT_NEAR(s2, 0.0, 0, "empty merge");
  EXPECT_NEAR(where_pos(0.0, double(NAN)), 0.0, 0, "0 log 0 = 0");
  // Identical rows: every divergence is 0.
  std::vector<double> a = {0.1, 0.2, -5.0};
  for (int64_t div : {KL, REVERSE_KL, JSD}) {
    double v, at, as;
    row_div(div, a, a, 0.5, v, at, as);
    EXPECT_NEAR(v, 0.0, 1e-15, "D(p, p) = 0");
  }
  // Label-smoothed CE from (lse, z_y, sum z).
  EXPECT_NEAR(ce_value(2.0, 0.5, 3.0, 0.1, 3), 2.0 - 0.9 * 0.5 - 0.1, 1e-15, "ce_value");
}

static void test_vectorized_matches_scalar() {
  using Vec = at::vec::Vectorized<float>;
  float ps[Vec::size()], pt[Vec::size()], lps[Vec::size()], lpt[Vec::size()];
  for (int i = 0; i < Vec::size(); ++i) {
    ps[i] = i % 3 == 0 ? 0.f : 0.01f * (i + 1);  // zeros exercise the 0 log 0 blend
    pt[i] = 0.02f * (Vec::size() - i);
    lps[i] = ps[i] > 0 ? std::log(ps[i]) : -INFINITY;
    lpt[i] = std::log(pt[i]);
  }
  for (int64_t div : {KL, REVERSE_KL, JSD}) {
    Vec vat(0), vas(0), vds, vdt;
    kd_div_terms(div, Vec::loadu(ps), Vec::loadu(pt), Vec::loadu(lps), Vec::loadu(lpt), Vec(0.4f), Vec(1.f), vat, vas);
    kd_div_grads(div, Vec::loadu(ps), Vec::loadu(pt), Vec::loadu(lps), Vec::loadu(lpt), Vec(0.4f), Vec(1.f),
                 Vec(0.1f), Vec(0.2f), vds, vdt);
    float at_l[Vec::size()], as_l[Vec::size()], ds_l[Vec::size()], dt_l[Vec::size()];
    vat.store(at_l); vas.store(as_l); vds.store(ds_l); vdt.store(dt_l);
    for (int i = 0; i < Vec::size(); ++i) {
      float at = 0, as = 0, ds, dt;
      kd_div_terms(div, ps[i], pt[i], lps[i], lpt[i], 0.4f, 1.f, at, as);
      kd_div_grads(div, ps[i], pt[i], lps[i], lpt[i], 0.4f, 1.f, 0.1f, 0.2f, ds, dt);
      EXPECT_NEAR(at_l[i], at, 1e-5, "vec acc_t");
      EXPECT_NEAR(as_l[i], as, 1e-5, "vec acc_s");
      EXPECT_NEAR(ds_l[i], ds, 1e-5, "vec ds");
      EXPECT_NEAR(dt_l[i], dt, 1e-5, "vec dt");
    }
  }
}

int main() {
#if defined(CPU_CAPABILITY_AVX2)
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
    std::printf("SKIP: this CPU lacks AVX2/FMA\n");
    return 0;
  }
#endif
  test_gradients();
  test_online_merge_and_zero_log_zero();
  test_vectorized_matches_scalar();
  std::printf("%s (%d failures)\n", failures ? "FAILED" : "all shared-math checks passed", failures);
  return failures ? 1 : 0;
}
