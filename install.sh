#!/usr/bin/env bash
# Installs modality-agent into .venv in this checkout. Idempotent: run it again to update.
#   ./install.sh          the agent only
#   ./install.sh --demo   also Orthanc, the local archive `modality-agent demo` starts (root: apt)
#   ./install.sh --dev    also the test tools and the real peers the tests use:
#                         Debian packages dcmtk orthanc dicom3tools, and chromium, the real
#                         browser the hostile-page tests load pages in (root: apt)
#   ./install.sh --system [--uninstall [--purge]]   (root) the agent as a systemd service:
#                         /opt/modality-agent, user modality-agent, /etc/modality-agent/agent.toml
#                         (never overwritten), spool /var/lib/modality-agent (0700), the unit;
#                         --uninstall keeps the spool and /etc/modality-agent unless --purge
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

current_step="start"
want_dev=0
want_demo=0
want_system=0
want_uninstall=0
want_purge=0
for arg in "$@"; do
  case "$arg" in
    --dev) want_dev=1; want_demo=1 ;;
    --demo) want_demo=1 ;;
    --system) want_system=1 ;;
    --uninstall) want_uninstall=1 ;;
    --purge) want_purge=1 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $arg (use --demo, --dev or --system)" >&2; exit 2 ;;
  esac
done
if [ "$want_system" = 1 ] && [ "$want_demo" = 1 ]; then
  echo "install.sh: --system installs the service only; run --demo or --dev separately" >&2
  exit 2
fi
if [ "$want_system" = 0 ] && [ $((want_uninstall + want_purge)) -gt 0 ]; then
  echo "install.sh: --uninstall and --purge go with --system" >&2; exit 2
fi
if [ "$want_purge" = 1 ] && [ "$want_uninstall" = 0 ]; then
  echo "install.sh: --purge goes with --uninstall (install.sh --system --uninstall --purge)" >&2
  exit 2
fi

step() { echo "==> $*"; }
fail() { echo "install.sh: FAILED at step: $current_step" >&2; exit 1; }
trap fail ERR

if [ "$want_system" = 1 ]; then
  # shellcheck source=packaging/system-install.sh
  . "$here/packaging/system-install.sh"
  if [ "$want_uninstall" = 1 ]; then system_uninstall; else system_install; fi
  exit 0
fi

apt_packages=()
[ "$want_demo" = 1 ] && apt_packages+=(orthanc)
# chromium: the hostile-page and console tests; systemd (systemd-analyze) and libseccomp2: the
# service unit tests; prometheus: promtool for the metrics and alert-rule tests; rsyslog and
# rsyslog-gnutls: the audit record repository the audit tests start, libxml2-utils: xmllint,
# which checks every audit message against the PS3.15 A.5.1 schema; orthanc-dicomweb: the
# STOW-RS archive; postgresql and orthanc-postgresql: two Orthanc nodes on one database (the
# archive-group failover tests and `python -m bench fleet`)
[ "$want_dev" = 1 ] && apt_packages+=(dcmtk dicom3tools chromium systemd libseccomp2 prometheus
                                      rsyslog rsyslog-gnutls libxml2-utils orthanc-dicomweb
                                      postgresql orthanc-postgresql)

if [ ${#apt_packages[@]} -gt 0 ]; then
  missing=()
  for pkg in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
      current_step="apt-get update"; step "$current_step"
      apt-get update -qq
      current_step="apt-get install ${missing[*]}"; step "$current_step"
      # the Debian orthanc package would start its own service on a systemd host: the
      # agent's demo and tests start their own Orthanc on free ports, so it is not needed
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
      # Debian's prometheus package starts a server on :9090 where systemd runs: the tests only
      # need its promtool
      if [[ " ${missing[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
        systemctl disable --now prometheus >/dev/null 2>&1 || true
      fi
      # ...and postgresql its cluster on :5432: the tests and the fleet bench run their own
      # unprivileged cluster (initdb/pg_ctl) in a temporary folder
      if [[ " ${missing[*]} " == *" postgresql "* ]] && [ -d /run/systemd/system ]; then
        systemctl disable --now postgresql >/dev/null 2>&1 || true
      fi
    else
      echo "install.sh: needs Debian packages: ${missing[*]}" >&2
      echo "  run as root, or first: sudo apt-get install ${missing[*]}" >&2
      exit 1
    fi
  fi
fi

python="${PYTHON:-python3}"
current_step="check Python >= 3.11 ($python)"; step "$current_step"
"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || {
  echo "install.sh: Python 3.11 or newer is needed (found $("$python" --version 2>&1))" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  current_step="create .venv"; step "$current_step"
  "$python" -m venv .venv
fi

extras=""
# the tests cover every transfer syntax, so they need the compression encoders too
[ "$want_dev" = 1 ] && extras="[test,compression]"
current_step="pip install modality-agent$extras into .venv"; step "$current_step"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".$extras"

current_step="check the installation"; step "$current_step"
.venv/bin/modality-agent --help > /dev/null
echo "modality-agent installed in $here/.venv"
