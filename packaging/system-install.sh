# shellcheck shell=bash
# `install.sh --system [--uninstall [--purge]]`: the agent as a systemd service (issue 17).
# Sourced by install.sh, which provides $here (this checkout), step(), $current_step and the
# ERR trap that names the failing step. Every step is idempotent: run it again to upgrade.
#
# MODALITY_AGENT_SYSTEM_ROOT (default "", i.e. /) puts every path under another root and
# skips systemctl, and MODALITY_AGENT_USER (default modality-agent) names the service user:
# both exist for tests/integration/test_systemd_unit.py, not for installations.

# without errtrace, a failure inside a function would exit without naming its step
set -o errtrace

sys_root="${MODALITY_AGENT_SYSTEM_ROOT:-}"
sys_user="${MODALITY_AGENT_USER:-modality-agent}"
sys_prefix="$sys_root/opt/modality-agent"
sys_etc="$sys_root/etc/modality-agent"
sys_spool="$sys_root/var/lib/modality-agent"
sys_unit_dir="$sys_root/etc/systemd/system"
sys_unit="$sys_unit_dir/modality-agent.service"

require_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "install.sh --system: run as root (it creates a user and writes /opt, /etc, /var/lib)" >&2
    exit 1
  fi
}

# sd_booted(3): systemd is the init system exactly when this directory exists. In a container
# without it (PID 1 is not systemd) the unit is installed but not enabled or started.
systemd_running() { [ -z "$sys_root" ] && [ -d /run/systemd/system ]; }

system_install() {
  require_root
  local python="${PYTHON:-python3}"
  current_step="check Python >= 3.11 ($python)"; step "$current_step"
  "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || {
    echo "install.sh: Python 3.11 or newer is needed (found $("$python" --version 2>&1))" >&2
    exit 1; }

  if ! id -u "$sys_user" > /dev/null 2>&1; then
    current_step="create system user $sys_user"; step "$current_step"
    # no login shell, no password; home = the spool, the only place it may write
    useradd --system --user-group --home-dir "$sys_spool" --no-create-home \
      --shell /usr/sbin/nologin --comment "modality-agent DICOM agent" "$sys_user"
  fi

  current_step="create the spool $sys_spool (0700, $sys_user)"; step "$current_step"
  install -d -m 0755 "$(dirname "$sys_spool")"
  install -d -m 0700 -o "$sys_user" -g "$sys_user" "$sys_spool"
  # a spool kept by --uninstall belongs to the old user's uid: hand it to the new one
  chown -R "$sys_user:$sys_user" "$sys_spool"

  if [ ! -x "$sys_prefix/.venv/bin/python" ]; then
    current_step="create $sys_prefix/.venv"; step "$current_step"
    install -d -m 0755 "$sys_prefix"
    "$python" -m venv "$sys_prefix/.venv"
  fi
  # --force-reinstall --no-deps: the same version number from a changed checkout must still
  # replace the installed code (pip would call it satisfied); then the dependencies
  current_step="pip install modality-agent[compression] into $sys_prefix/.venv"
  step "$current_step"
  "$sys_prefix/.venv/bin/python" -m pip install -q --disable-pip-version-check \
    --force-reinstall --no-deps "$here"
  "$sys_prefix/.venv/bin/python" -m pip install -q --disable-pip-version-check \
    "$here[compression]"
  install -d -m 0755 "$sys_prefix/share/doc"
  install -m 0644 "$here/docs/service-guide.md" "$here/docs/configuration.md" \
    "$sys_prefix/share/doc/"

  current_step="write $sys_etc/agent.toml"
  if [ -e "$sys_etc/agent.toml" ]; then
    step "keep the existing $sys_etc/agent.toml"
  else
    step "$current_step"
    install -d -m 0755 "$sys_etc"
    # the example's relative spool ("spool", beside the config) would be under /etc, which
    # the unit makes read-only: point spool and API token at the service's spool
    local new_config="$sys_etc/agent.toml.new"
    sed -e "s|^spool_dir = \"spool\"|spool_dir = \"$sys_spool\"|" \
        -e "s|^token_file = \"spool/api-token\"|token_file = \"$sys_spool/api-token\"|" \
        "$here/config/agent.example.toml" > "$new_config"
    grep -q "^spool_dir = \"$sys_spool\"" "$new_config"
    grep -q "^token_file = \"$sys_spool/api-token\"" "$new_config"
    # readable by the service, writable by root only: the agent cannot change its own config
    chown "root:$sys_user" "$new_config"
    chmod 0640 "$new_config"
    mv "$new_config" "$sys_etc/agent.toml"
  fi

  current_step="install the unit $sys_unit"; step "$current_step"
  install -d -m 0755 "$sys_unit_dir"
  sed -e "s|^User=modality-agent$|User=$sys_user|" -e "s|^Group=modality-agent$|Group=$sys_user|" \
    "$here/packaging/systemd/modality-agent.service" > "$sys_unit.new"
  chmod 0644 "$sys_unit.new"
  mv "$sys_unit.new" "$sys_unit"

  current_step="check $sys_etc/agent.toml"; step "$current_step"
  "$sys_prefix/.venv/bin/modality-agent" --config "$sys_etc/agent.toml" check-config

  if systemd_running; then
    current_step="systemctl daemon-reload, enable and (re)start modality-agent"
    step "$current_step"
    systemctl daemon-reload
    systemctl enable modality-agent.service
    systemctl restart modality-agent.service
    echo "modality-agent installed and running: systemctl status modality-agent"
  else
    echo "modality-agent installed in $sys_prefix; systemd is not running here (PID 1 is" \
      "$(cat /proc/1/comm 2>/dev/null || echo unknown)), so the unit was not enabled or started:" \
      "on the device run systemctl daemon-reload && systemctl enable --now modality-agent"
  fi
}

system_uninstall() {
  require_root
  if systemd_running && [ -e "$sys_unit" ]; then
    current_step="stop and disable modality-agent"; step "$current_step"
    systemctl disable --now modality-agent.service
  fi
  current_step="remove the unit $sys_unit"; step "$current_step"
  rm -f "$sys_unit"
  if systemd_running; then
    current_step="systemctl daemon-reload"; step "$current_step"
    systemctl daemon-reload
  fi
  current_step="remove $sys_prefix"; step "$current_step"
  rm -rf "$sys_prefix"
  if id -u "$sys_user" > /dev/null 2>&1; then
    current_step="remove the user $sys_user"; step "$current_step"
    userdel "$sys_user"
    # --user-group made a group of the same name; userdel removes it unless shared
    if getent group "$sys_user" > /dev/null; then groupdel "$sys_user"; fi
  fi
  if [ "$want_purge" = 1 ]; then
    current_step="purge the spool $sys_spool and $sys_etc"; step "$current_step"
    rm -rf "$sys_spool" "$sys_etc"
    echo "modality-agent removed, with its spool and configuration"
  else
    echo "modality-agent removed; kept the spool $sys_spool (queued images) and $sys_etc:" \
      "install.sh --system --uninstall --purge deletes them"
  fi
}
