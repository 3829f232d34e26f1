// The adapter's subgroup size, as a kernel sees it (Device.subgroup_size): one invocation writes it.
// Bindings (group 0):
//   out  rw  array<u32>  (1)
@group(0) @binding(0) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(subgroup_size) sgs: u32) {
    if (lid == 0u) { out[0] = sgs; }
}
