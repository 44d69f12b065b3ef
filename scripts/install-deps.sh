#!/usr/bin/env bash
# Installs the real servers and clients the end-to-end tests run against (Debian/Ubuntu).
# Idempotent and fast when everything is present: it checks files first and only then
# touches apt. Works as root (as in CI containers) or via sudo.
set -euo pipefail

# One entry per apt package: "package:probe". The probe is an executable (absolute path, or
# a command name looked up on PATH) that only exists once the package is installed; files are
# checked instead of dpkg so that e.g. a pyenv python3 counts as present. A probe with "::"
# is a Perl module (swaks needs Net::SSLeay for --tls, and its path varies with perl's version).
DEPS=(
  "dovecot-imapd:/usr/lib/dovecot/imap"
  "dovecot-pop3d:/usr/lib/dovecot/pop3"
  "dovecot-lmtpd:/usr/lib/dovecot/lmtp"
  "dovecot-managesieved:/usr/lib/dovecot/managesieve"
  "python3:python3"
  "postfix:/usr/sbin/postfix"
  "swaks:swaks"
  "curl:curl"
  "libnet-ssleay-perl:Net::SSLeay"
  "postgresql-15:/usr/lib/postgresql/15/bin/postgres"
  "redis-server:redis-server"
)

present() {
  local probe=$1
  if [[ $probe == *::* ]]; then
    perl -M"$probe" -e 1 >/dev/null 2>&1
  elif [[ $probe == /* ]]; then
    [[ -x $probe ]]
  else
    command -v "$probe" >/dev/null 2>&1
  fi
}

missing=()
for entry in "${DEPS[@]}"; do
  package=${entry%%:*}
  probe=${entry#*:}
  present "$probe" || missing+=("$package")
done

if ((${#missing[@]} == 0)); then
  exit 0
fi

echo "install-deps: installing ${missing[*]}" >&2
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-deps: apt-get not found; install ${missing[*]} by hand" >&2
  exit 1
fi

if [[ $(id -u) -eq 0 ]]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "install-deps: not root and no sudo; install ${missing[*]} by hand" >&2
  exit 1
fi

# Postfix asks an interactive question on install unless it is preseeded.
if [[ " ${missing[*]} " == *" postfix "* ]]; then
  echo "postfix postfix/main_mailer_type select No configuration" |
    "${as_root[@]}" debconf-set-selections
fi

export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
