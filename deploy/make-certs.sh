#!/usr/bin/env bash
# Creates a small private CA and a server certificate for the Switchyard control plane
# (its [api] and [grpc] listeners), for deploy/compose.yaml and deploy/kubernetes/.
#
#   deploy/make-certs.sh [--force] [--group GID] [--san NAME]... [DIR]
#
# DIR (default: deploy/compose/tls next to this script) receives:
#
#   ca.pem            CA certificate (0644): the nodes' [control] tls_ca
#   ca.key            CA private key (0600): only needed to issue certificates again.
#                     Containers never need it, and its mode keeps it from their user
#                     where the whole directory is mounted; better kept elsewhere
#   controlplane.pem  server certificate (0644): [api] and [grpc] tls_cert
#   controlplane.key  server private key (0640): [api] and [grpc] tls_key
#
# The server certificate names controlplane (the compose service),
# switchyard-controlplane (the Kubernetes Service), localhost and 127.0.0.1, plus every
# --san NAME (a DNS name or an IP address; repeatable), e.g. the control plane's FQDN
# switchyard-controlplane.NAMESPACE.svc or the host name you publish the API under.
#
# Idempotent: files that exist are kept. With a CA present and the server pair missing,
# a new server certificate is issued from that CA (delete controlplane.pem and
# controlplane.key to renew it). --force replaces everything, CA included: every node
# then needs the new ca.pem.
#
# --group GID: hand controlplane.key to group GID (mode stays 0640), for a
# container user that is not you. The image runs as uid/gid 10001, so for Docker Compose
# run `sudo deploy/make-certs.sh --group 10001` (changing a file's group to one you are not
# a member of needs root). It also applies to files that already exist, so it can be run
# after a plain run. Without it the key is readable only by you and your group.
#
# Needs openssl (1.1.1 or later). Keys are ECDSA P-256.

set -euo pipefail

usage() {
    sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$0" >&2
    exit "${1:-2}"
}

die() {
    echo "make-certs.sh: $*" >&2
    exit 1
}

force=0
group=""
extra_sans=()
dir=""
while [ $# -gt 0 ]; do
    case "$1" in
        --force) force=1 ;;
        --group) [ $# -ge 2 ] || die "--group needs a GID"; group="$2"; shift ;;
        --group=*) group="${1#--group=}" ;;
        --san) [ $# -ge 2 ] || die "--san needs a name"; extra_sans+=("$2"); shift ;;
        --san=*) extra_sans+=("${1#--san=}") ;;
        -h|--help) usage 0 ;;
        --) shift; [ $# -le 1 ] || usage; dir="${1:-}"; break ;;
        -*) echo "make-certs.sh: unknown option $1" >&2; usage ;;
        *) [ -z "$dir" ] || usage; dir="$1" ;;
    esac
    shift
done

command -v openssl >/dev/null 2>&1 \
    || die "openssl not found; install it (Debian/Ubuntu: apt-get install -y openssl)"

if [ -z "$dir" ]; then
    dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/compose/tls"
fi

# Every SAN once, typed: IPv4/IPv6 literals as IP:, the rest as DNS:.
# (No associative arrays or empty "${a[@]}" under set -u: macOS still ships bash 3.2.)
sans=""
for name in controlplane switchyard-controlplane localhost 127.0.0.1 ${extra_sans[@]+"${extra_sans[@]}"}; do
    [ -n "$name" ] || continue
    case ",$sans," in *":$name,"*) continue ;; esac
    if [[ "$name" =~ ^[0-9]+(\.[0-9]+){3}$ || "$name" == *:* ]]; then
        entry="IP:$name"
    elif [[ "$name" =~ ^[A-Za-z0-9*]([A-Za-z0-9.-]*[A-Za-z0-9])?$ ]]; then
        entry="DNS:$name"
    else
        die "--san $name: not a DNS name or an IP address"
    fi
    sans="${sans:+$sans,}$entry"
done

umask 077
if [ ! -d "$dir" ]; then
    mkdir -p "$dir"
    # Searchable by the container user; the files carry their own modes.
    chmod 0755 "$dir"
elif [ -z "$(find "$dir" -maxdepth 0 -perm -o=x)" ]; then
    echo "warning: $dir is not searchable by others: a container user other than you" \
         "cannot reach the files in it (chmod o+x $dir)" >&2
fi

ca_pem="$dir/ca.pem" ca_key="$dir/ca.key"
cp_pem="$dir/controlplane.pem" cp_key="$dir/controlplane.key"

have() { [ -e "$1" ]; }

work="$(mktemp -d "$dir/.make-certs.XXXXXX")"
trap 'rm -rf "$work"' EXIT

new_key() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null \
        || die "openssl genpkey failed"
}

serial() { echo "0x$(openssl rand -hex 16)"; }

make_ca=0 make_cp=0
if [ "$force" = 1 ]; then
    make_ca=1 make_cp=1
else
    if have "$cp_pem" && have "$cp_key"; then
        :
    elif have "$cp_pem" || have "$cp_key"; then
        die "$dir has only one of controlplane.pem and controlplane.key; remove it or rerun with --force"
    else
        make_cp=1
    fi
    if have "$ca_pem" && have "$ca_key"; then
        :
    elif have "$ca_key"; then
        die "$dir has ca.key but no ca.pem; remove it or rerun with --force"
    elif have "$ca_pem"; then
        # The CA key may have been moved offline: fine until a certificate is issued.
        [ "$make_cp" = 0 ] || die "$ca_key is needed to issue controlplane.pem; put it back or rerun with --force"
    elif [ "$make_cp" = 0 ]; then
        die "$dir has a server certificate but no CA; rerun with --force to start over"
    else
        make_ca=1
    fi
fi

if [ "$make_ca" = 1 ]; then
    new_key "$work/ca.key"
    cat > "$work/ca.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
x509_extensions = ca
[dn]
CN = Switchyard control-plane CA
[ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
    openssl req -new -x509 -config "$work/ca.cnf" -key "$work/ca.key" -sha256 \
        -days 3650 -set_serial "$(serial)" -out "$work/ca.pem" 2>/dev/null \
        || die "creating the CA certificate failed"
    signer_pem="$work/ca.pem" signer_key="$work/ca.key"
else
    signer_pem="$ca_pem" signer_key="$ca_key"
    [ "$make_cp" = 0 ] || [ -r "$ca_key" ] || die "cannot read $ca_key to issue a server certificate"
fi

if [ "$make_cp" = 1 ]; then
    new_key "$work/controlplane.key"
    cat > "$work/cp.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = controlplane
[leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = $sans
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
    openssl req -new -config "$work/cp.cnf" -key "$work/controlplane.key" \
        -out "$work/controlplane.csr" 2>/dev/null || die "creating the server CSR failed"
    # 825 days: the longest validity some clients (Apple's) accept for a TLS server
    # certificate, from a private CA too; rerun after deleting the pair to renew.
    openssl x509 -req -in "$work/controlplane.csr" -CA "$signer_pem" -CAkey "$signer_key" \
        -set_serial "$(serial)" -days 825 -sha256 -extfile "$work/cp.cnf" -extensions leaf \
        -out "$work/controlplane.pem" 2>/dev/null || die "signing the server certificate failed"
    openssl verify -CAfile "$signer_pem" "$work/controlplane.pem" >/dev/null \
        || die "the new server certificate does not verify against $signer_pem"
fi

# Modes before the files appear under their real names, then atomic renames.
install_file() {  # NAME MODE
    [ -e "$work/$1" ] || return 0
    chmod "$2" "$work/$1"
    mv -f "$work/$1" "$dir/$1"
    echo "wrote $dir/$1 (mode $2)"
}
install_file ca.key 0600
install_file ca.pem 0644
install_file controlplane.key 0640
install_file controlplane.pem 0644
[ "$make_ca" = 1 ] || echo "kept $ca_pem"
[ "$make_cp" = 1 ] || echo "kept $cp_pem and $cp_key"

if [ -n "$group" ]; then
    chgrp "$group" "$cp_key" \
        || die "chgrp $group failed: run as root (sudo) or as a member of group $group"
    chmod 0640 "$cp_key"
    echo "group of $cp_key set to $group (mode 0640)"
else
    cat <<EOF
note: controlplane.key is mode 0640, readable by you and your group only. A container
      running as another user (the image's uid/gid 10001) cannot read it: for Docker
      Compose run  sudo chgrp 10001 $cp_key  (or rerun with sudo and --group 10001).
EOF
fi
