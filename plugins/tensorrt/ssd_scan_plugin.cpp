// mamba.SSDScan (docs/ops.md, Mamba-2) as a scan plugin (scan_plugin.h).
#include <limits>
#include <sstream>

#include "scan_plugin.h"

namespace mamba_trt {
namespace {

mamba_ssd_scan_params fill(Fields const& f, Binding const& t) {
  mamba_ssd_scan_params p{};
  p.batch = t.size('b');
  p.seqlen = t.size('L');
  p.nheads = t.size('H');
  p.headdim = t.size('P');
  p.dstate = t.size('N');
  p.groups = t.size('G');
  p.dtype = t.dtype;
  p.x = t.in(0);
  p.dt = t.in(1);
  p.A = t.floats(2);
  p.B = t.in(3);
  p.C = t.in(4);
  p.D = t.floats(5);
  p.z = t.in(6);
  p.dt_bias = t.floats(7);
  p.initial_state = t.floats(8);
  p.dt_softplus = f.flag("dt_softplus");
  p.dt_min = f.number("dt_min");
  p.dt_max = f.number("dt_max");
  p.y = t.outputs[0];
  p.final_state = static_cast<float*>(t.outputs[1]);
  return p;
}

// An empty clamp range would give dt_max everywhere: refused, as by the other backends.
std::string check_clamp(Fields const& f) {
  if (f.number("dt_min") <= f.number("dt_max")) return {};
  std::ostringstream problem;
  problem << "attribute dt_min (" << f.number("dt_min") << ") must be <= dt_max (" << f.number("dt_max") << ")";
  return problem.str();
}

}  // namespace

OpSpec const& ssd_scan_op() {
  static OpSpec const op{
      "SSDScan",
      {{"dt_softplus", FieldSpec::kFlag, 0},
       {"dt_min", FieldSpec::kFloat, 0.0f},
       {"dt_max", FieldSpec::kFloat, std::numeric_limits<float>::infinity()},
       {"has_D", FieldSpec::kFlag, 0},
       {"has_z", FieldSpec::kFlag, 0},
       {"has_dt_bias", FieldSpec::kFlag, 0},
       {"has_initial_state", FieldSpec::kFlag, 0}},
      {{"x", "bLHP", true},
       {"dt", "bLH", true},
       {"A", "H", false},
       {"B", "bLGN", true},
       {"C", "bLGN", true},
       {"D", "H", false, "has_D"},
       {"z", "bLHP", true, "has_z"},
       {"dt_bias", "H", false, "has_dt_bias"},
       {"initial_state", "bHPN", false, "has_initial_state"}},
      "bHPN",
      'G',
      'H',
      check_clamp,
      kernel_calls<mamba_ssd_scan_params, fill, mamba_ssd_scan_cuda_check, mamba_ssd_scan_cuda_workspace_size,
                   mamba_ssd_scan_cuda>(),
  };
  return op;
}

}  // namespace mamba_trt
