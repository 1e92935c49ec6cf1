# shellcheck shell=bash
# Helpers shared by the scripts in scripts/: reaching the servers of a
# sandbox made by scripts/sandbox (ports, passwords, SQL), and what the bench
# scripts measure and write. Source it after `set -euo pipefail`; it only
# defines functions and SB_SCRIPTS.
#
# A sandbox's ports are chosen when it is created and recorded in
# DIR/instances; read them from there (sb_port), never assume them.

SB_SCRIPTS=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)

# sb_port DIR SHARD: the TCP port of SHARD (mysql-0, pg-1, ...) in the sandbox in DIR.
sb_port() {
    local port
    port=$(awk -v s="$2" '$1 !~ /^#/ && $2 == s { print $3; exit }' "$1/instances" 2>/dev/null) || port=
    if [ -z "$port" ]; then
        echo "no shard $2 in the sandbox $1 (no such line in $1/instances)" >&2
        return 1
    fi
    echo "$port"
}

# sb_pw DIR SHARD: the password of the `shardcut` user on SHARD.
sb_pw() {
    cat "$1/secrets/$2.password"
}

# sb_mysql DIR SHARD SQL: runs SQL as `shardcut` on a MariaDB shard over TCP;
# prints the result tab-separated, without column names.
sb_mysql() {
    mariadb --defaults-file="$1/secrets/$2.my.cnf" --protocol=tcp -N -B -e "$3"
}

# sb_psql DIR SHARD DB SQL: runs SQL as `shardcut` in database DB of a
# PostgreSQL shard over TCP, stopping at the first error; output discarded.
sb_psql() {
    local port pw
    port=$(sb_port "$1" "$2") || return 1
    pw=$(sb_pw "$1" "$2") || return 1
    PGPASSWORD=$pw psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U shardcut -d "$3" -c "$4" >/dev/null
}

# sb_psql_value DIR SHARD DB SQL: like sb_psql, but prints the result
# unaligned, without headers (one value per line).
sb_psql_value() {
    local port pw
    port=$(sb_port "$1" "$2") || return 1
    pw=$(sb_pw "$1" "$2") || return 1
    PGPASSWORD=$pw psql -X -q -tA -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U shardcut -d "$3" -c "$4"
}

# sb_buffer_pool SIZE DIR...: gives mysql-0 of each sandbox an InnoDB
# buffer pool of SIZE (bytes, or with a K/M/G suffix) instead of the
# sandbox's 64 MiB, and waits until every server reports it (the resize runs
# in the background).
sb_buffer_pool() {
    local bytes d
    bytes=$(numfmt --from=iec "$1")
    shift
    for d in "$@"; do
        sb_mysql "$d" mysql-0 "SET GLOBAL innodb_buffer_pool_size = $bytes"
    done
    for d in "$@"; do
        for _ in $(seq 120); do
            [ "$(sb_mysql "$d" mysql-0 "SELECT @@innodb_buffer_pool_size")" = "$bytes" ] && continue 2
            sleep 0.5
        done
        echo "the buffer pool of mysql-0 in $d did not reach $bytes bytes within 60 s" >&2
        return 1
    done
}

# sb_settle DIR SHARD...: lets each server finish the background work the
# last load left, which would otherwise land on whichever command runs
# next: a PostgreSQL shard (pg-*) checkpoints; a MariaDB shard (mysql-*)
# flushes InnoDB's dirty pages (waiting at most 120 s); then the kernel's
# dirty file pages are synced.
sb_settle() {
    local dir=$1 s dirty
    shift
    for s in "$@"; do
        case "$s" in
            pg-*) sb_psql "$dir" "$s" postgres "CHECKPOINT" ;;
            mysql-*)
                sb_mysql "$dir" "$s" "SET GLOBAL innodb_max_dirty_pages_pct = 0" || true
                for _ in $(seq 120); do
                    dirty=$(sb_mysql "$dir" "$s" "SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_pages_dirty'" | cut -f2)
                    [ "${dirty:-0}" -lt 100 ] && break
                    sleep 1
                done
                sb_mysql "$dir" "$s" "SET GLOBAL innodb_max_dirty_pages_pct = DEFAULT" || true
                ;;
        esac
    done
    sync
}

# sb_down_quiet DIR...: tears down each sandbox, ignoring failures (for traps).
sb_down_quiet() {
    local d
    for d in "$@"; do
        "$SB_SCRIPTS/sandbox" down --dir "$d" >/dev/null 2>&1 || true
    done
}

# need_cmd PROG CMD PACKAGE: makes sure CMD is available, installing the
# Debian PACKAGE when running as root; otherwise fails naming the package.
need_cmd() {
    command -v "$2" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get install -y -qq "$3" >/dev/null || true
    fi
    command -v "$2" >/dev/null 2>&1 && return 0
    echo "$1: $2 is not installed (apt-get install $3)" >&2
    return 1
}

# time_wall_secs FILE / time_peak_kib FILE: wall-clock seconds and peak
# resident set size (KiB) from what `/usr/bin/time -v` wrote to FILE.
time_wall_secs() {
    sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$1" \
        | awk -F: '{ if (NF == 3) print $1 * 3600 + $2 * 60 + $3; else print $1 * 60 + $2 }'
}
time_peak_kib() {
    sed -n 's/.*Maximum resident set size (kbytes): //p' "$1"
}

# doc_section FILE HEAD INTRO BODY: replaces the markdown section whose
# heading line is HEAD in FILE (up to the next "## " heading) with HEAD,
# INTRO and BODY, or appends it when FILE has no such section.
doc_section() {
    python3 - "$@" <<'PY'
import sys
path, head, intro, body = sys.argv[1:]
text = open(path).read()
section = f"{head}\n\n{intro}\n\n{body}\n"
if head in text:
    start = text.index(head)
    end = text.find("\n## ", start + len(head))
    text = text[:start] + section + (text[end:] if end != -1 else "")
else:
    text = text.rstrip("\n") + "\n\n" + section
open(path, "w").write(text)
PY
}
