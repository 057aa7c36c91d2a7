use kube::CustomResourceExt;

fn main() {
    print!("{}", serde_saphyr::to_string(&operator::crd::RelayChannel::crd()).expect("CRD serializes"));
}
