// mamba.SelectiveScan (docs/ops.md, Mamba-1) as a scan plugin (scan_plugin.h).
#include "scan_plugin.h"

namespace mamba_trt {
namespace {

mamba_selective_scan_params fill(Fields const& f, Binding const& t) {
  mamba_selective_scan_params p{};
  p.batch = t.size('b');
  p.dim = t.size('d');
  p.seqlen = t.size('L');
  p.dstate = t.size('N');
  p.groups = t.size('G');
  p.dtype = t.dtype;
  p.u = t.in(0);
  p.delta = t.in(1);
  p.A = t.floats(2);
  p.B = t.in(3);
  p.C = t.in(4);
  p.D = t.floats(5);
  p.z = t.in(6);
  p.delta_bias = t.floats(7);
  p.initial_state = t.floats(8);
  p.delta_softplus = f.flag("delta_softplus");
  p.y = t.outputs[0];
  p.final_state = static_cast<float*>(t.outputs[1]);
  return p;
}

}  // namespace

OpSpec const& selective_scan_op() {
  static OpSpec const op{
      "SelectiveScan",
      {{"delta_softplus", FieldSpec::kFlag, 0},
       {"has_D", FieldSpec::kFlag, 0},
       {"has_z", FieldSpec::kFlag, 0},
       {"has_delta_bias", FieldSpec::kFlag, 0},
       {"has_initial_state", FieldSpec::kFlag, 0}},
      {{"u", "bdL", true},
       {"delta", "bdL", true},
       {"A", "dN", false},
       {"B", "bGNL", true},
       {"C", "bGNL", true},
       {"D", "d", false, "has_D"},
       {"z", "bdL", true, "has_z"},
       {"delta_bias", "d", false, "has_delta_bias"},
       {"initial_state", "bdN", false, "has_initial_state"}},
      "bdN",
      'G',
      'd',
      nullptr,
      kernel_calls<mamba_selective_scan_params, fill, mamba_selective_scan_cuda_check,
                   mamba_selective_scan_cuda_workspace_size, mamba_selective_scan_cuda>(),
  };
  return op;
}

}  // namespace mamba_trt
