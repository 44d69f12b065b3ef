use switchyard_tests::Dovecot;
#[test]
fn probe() {
    let d = Dovecot::start_with(&[("alice@example.test", "pw")], "login_trusted_networks = 127.0.0.0/8\nauth_verbose = yes\n").unwrap();
    std::fs::write("/tmp/idprobe/ports", format!("{} {} {} {}", d.imap_port(), d.pop3_port(), d.sieve_port(), d.log_path().display())).unwrap();
    std::thread::sleep(std::time::Duration::from_secs(240));
}
