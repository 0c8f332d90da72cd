fn main() {
    let obj = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rf-tap"));
    let mut bpf = aya::Ebpf::load(obj).expect("load");
    for (name, _) in bpf.programs() { println!("{name}"); }
    let p: &mut aya::programs::SchedClassifier = bpf.program_mut("tc_ingress").unwrap().try_into().unwrap();
    p.load().expect("verify tc");
    let p: &mut aya::programs::Xdp = bpf.program_mut("xdp_ingress").unwrap().try_into().unwrap();
    p.load().expect("verify xdp");
    println!("ok");
}
