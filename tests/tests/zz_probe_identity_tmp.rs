use switchyard_tests::Dovecot;
#[test]
fn probe() {
    let d = Dovecot::start_with(&[("alice@example.test", "pw")], "auth_verbose = yes\n").unwrap();
    std::fs::write("/tmp/idprobe/ports", format!("{} {} {} {}", d.imap_port(), d.pop3_port(), d.sieve_port(), d.log_path().display())).unwrap();
    std::thread::sleep(std::time::Duration::from_secs(240));
}
