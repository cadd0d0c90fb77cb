#!/usr/bin/env python3
"""Backup benchmark: dbkeep vs the hand-written pipeline, side by side, alternating.

Starts a throwaway PostgreSQL cluster on 127.0.0.1, loads the "mixed" table of
shared/TESTING.md (6 M rows, ~917 MB; --rows to change), then runs, alternating, N times each:
  pipeline:    pg_dump -Fc -Z0 | zstd -3 -T2 > f
  dbkeep:      dbkeep backup (zstd level 3, local storage)
  dbkeep+s3:   the same, streamed to local and to S3 at once (s3s-fs server on loopback)
  dbkeep-s3:   S3 only, no local copy
and reports median/min/max wall time, CPU time, peak RSS (/usr/bin/time -v) and output size,
with dbkeep's ratio to the pipeline. Writes the table to bench/results/<date>-backup.md.
Exits non-zero if any run failed. Needs: a release build (cargo build --release), zstd,
/usr/bin/time, PostgreSQL server binaries.
"""
import argparse
import datetime
import glob
import os
import pwd
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pg_bin():
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not dirs:
        sys.exit("no PostgreSQL server binaries: apt-get install postgresql")
    return os.path.dirname(dirs[-1])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, bin_dir):
        self.bin = bin_dir
        self.dir = tempfile.mkdtemp(prefix="dbkeep-bench-pg-", dir="/tmp")
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        os.chmod(self.dir, 0o755)
        self.server(["initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "-E", "UTF8",
                     "--locale=C.UTF-8", "--no-sync"])
        self.server(["pg_ctl", "-D", self.data, "-l", f"{self.dir}/server.log", "-w", "-o",
                     f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                     "-c shared_buffers=256MB -c max_wal_size=4GB", "start"])

    @property
    def data(self):
        return f"{self.dir}/data"

    def server(self, args):
        cmd = [f"{self.bin}/{args[0]}"] + args[1:]
        kw = {}
        if self.as_postgres:
            pw = pwd.getpwnam("postgres")
            kw = dict(user=pw.pw_uid, group=pw.pw_gid)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, **kw)

    def url(self, db):
        return f"postgres://postgres@127.0.0.1:{self.port}/{db}"

    def psql(self, db, sql):
        p = subprocess.run([f"{self.bin}/psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                            "-d", self.url(db), "-c", sql], capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"psql failed: {p.stderr}")
        return p.stdout.strip()

    def stop(self):
        subprocess.run([f"{self.bin}/pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       **({"user": "postgres"} if self.as_postgres else {}))
        shutil.rmtree(self.dir, ignore_errors=True)


def restore_runs(args, cluster, cfg, bin_dir, work, env, results, failed):
    """Restore into a fresh database: pg_restore of an uncompressed -Fc -Z0 archive vs
    `dbkeep restore --into` of the zstd backup (checksum pass, decompression, one transaction)."""
    raw = f"{work}/raw.dump"
    subprocess.run(["sh", "-c", f"{bin_dir}/pg_dump -Fc -Z0 -d '{cluster.url('bench')}' > {raw}"], check=True)
    shutil.rmtree(f"{work}/backups", ignore_errors=True)
    subprocess.run([args.binary, "--config", cfg, "backup", "bench"], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    results["restore: pg_restore -Z0"] = []
    results["restore: dbkeep"] = []
    for i in range(args.runs):
        for name in ("restore: pg_restore -Z0", "restore: dbkeep"):
            cluster.psql("postgres", "DROP DATABASE IF EXISTS restored WITH (FORCE)")
            if name.endswith("-Z0"):
                cluster.psql("postgres", "CREATE DATABASE restored")
                cmd = ["sh", "-c", f"{bin_dir}/pg_restore --no-owner -d '{cluster.url('restored')}' {raw}"]
            else:
                cmd = [args.binary, "--config", cfg, "restore", "bench", "--into", cluster.url("restored")]
            ok, wall, cpu, rss, err = timed(cmd, env)
            if not ok:
                failed.append(f"{name} run {i + 1}: {err}")
                continue
            rows = cluster.psql("restored", "SELECT count(*) FROM r")
            if rows != str(args.rows):
                failed.append(f"{name} run {i + 1}: restored {rows} rows, expected {args.rows}")
                continue
            results[name].append((wall, cpu, rss))
            print(f"  {name:24} run {i + 1}: {wall:6.2f} s wall, {cpu:6.2f} s cpu, {rss / 1024:6.1f} MiB peak RSS",
                  flush=True)
    cluster.psql("postgres", "DROP DATABASE IF EXISTS restored WITH (FORCE)")


def start_s3(work):
    """The s3s-fs example server on a free loopback port; returns (process, config section)."""
    subprocess.run(["cargo", "build", "--release", "--quiet", "--example", "s3_server"], cwd=ROOT, check=True)
    os.makedirs(f"{work}/s3data/bench")
    port = free_port()
    proc = subprocess.Popen([f"{ROOT}/target/release/examples/s3_server", f"{work}/s3data", str(port)],
                            stdout=subprocess.PIPE, text=True)
    proc.stdout.readline()
    section = (f'[storage.s3]\nbucket = "bench"\nprefix = "prod"\nendpoint = "http://127.0.0.1:{port}"\n'
               'force_path_style = true\naccess_key_id = "dbkeep-test-access"\n'
               'secret_access_key = "dbkeep-test-secret-4f1c9a"\n')
    return proc, section


def timed(cmd, env=None):
    """Run cmd under /usr/bin/time -v; return (ok, wall s, cpu s, max rss KiB, stderr tail)."""
    p = subprocess.run(["/usr/bin/time", "-v"] + cmd, capture_output=True, text=True, env=env)
    err = p.stderr
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", err)
    h, m, s = wall.groups()
    wall_s = int(h or 0) * 3600 + int(m) * 60 + float(s)
    user = float(re.search(r"User time \(seconds\): ([\d.]+)", err).group(1))
    sys_ = float(re.search(r"System time \(seconds\): ([\d.]+)", err).group(1))
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", err).group(1))
    return p.returncode == 0, wall_s, user + sys_, rss, err[-2000:]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=6_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--binary", default=f"{ROOT}/target/release/dbkeep")
    ap.add_argument("--no-s3", action="store_true", help="skip the S3 runs")
    ap.add_argument("--no-restore", action="store_true", help="skip the restore runs")
    args = ap.parse_args()
    if not os.path.exists(args.binary):
        sys.exit(f"{args.binary} missing: run cargo build --release first")
    for tool in ("zstd", "/usr/bin/time"):
        if not shutil.which(tool):
            sys.exit(f"{tool} missing: apt-get install zstd time")

    bin_dir = pg_bin()
    work = tempfile.mkdtemp(prefix="dbkeep-bench-", dir="/tmp")
    cluster = Cluster(bin_dir)
    failed = []
    try:
        cluster.psql("postgres", "CREATE DATABASE bench")
        print(f"loading {args.rows} rows ...", flush=True)
        cluster.psql("bench", f"""
            CREATE TABLE r AS
            SELECT g AS id, now() - g * interval '1s' AS ts, (random() * 1e9)::bigint AS n,
                   md5(random()::text) || ' ' || md5(g::text) AS txt,
                   (ARRAY['active','pending','closed'])[g % 3 + 1] AS st
            FROM generate_series(1, {args.rows}) g""")
        cluster.psql("bench", "VACUUM ANALYZE r")
        size = cluster.psql("bench", "SELECT pg_size_pretty(pg_total_relation_size('r'))")
        print(f"table r: {size}", flush=True)

        cfg = f"{work}/dbkeep.toml"
        with open(cfg, "w") as f:
            f.write(f'[storage.local]\npath = "{work}/backups"\n[targets.bench]\nkind = "postgres"\n'
                    f'url = "{cluster.url("bench")}"\ncompression = "zstd"\ncompression_level = 3\n'
                    f'pg_bin_dir = "{bin_dir}"\n')
        s3_server = None
        if not args.no_s3:
            s3_server, s3_section = start_s3(work)
            with open(f"{work}/both.toml", "w") as f:
                f.write(open(cfg).read() + s3_section)
            with open(f"{work}/s3only.toml", "w") as f:
                f.write(f'[daemon]\nwork_dir = "{work}/s3work"\n' + s3_section
                        + open(cfg).read().split("\n", 2)[2])
        pipeline_out = f"{work}/pipeline.dump.zst"
        cmds = {
            "pipeline": ["bash", "-c", f"set -o pipefail; {bin_dir}/pg_dump -Fc -Z0 "
                                     f"-d '{cluster.url('bench')}' | zstd -q -3 -T2 > {pipeline_out}"],
            "dbkeep": [args.binary, "--config", cfg, "backup", "bench"],
        }
        if s3_server:
            cmds["dbkeep+s3"] = [args.binary, "--config", f"{work}/both.toml", "backup", "bench"]
            cmds["dbkeep-s3"] = [args.binary, "--config", f"{work}/s3only.toml", "backup", "bench"]
        results = {k: [] for k in cmds}
        sizes = {}
        env = dict(os.environ, RUST_LOG="warn")
        # Warm the cache once, untimed.
        subprocess.run(["sh", "-c", f"{bin_dir}/pg_dump -Fc -Z0 -d '{cluster.url('bench')}' > /dev/null"],
                       check=True)
        for i in range(args.runs):
            for name, cmd in cmds.items():
                shutil.rmtree(f"{work}/backups", ignore_errors=True)
                shutil.rmtree(f"{work}/s3data/bench/prod", ignore_errors=True)
                ok, wall, cpu, rss, err = timed(cmd, env)
                if not ok:
                    failed.append(f"{name} run {i + 1}: {err}")
                    continue
                if name.startswith("dbkeep"):
                    out = glob.glob(f"{work}/backups/bench/*.dump.zst") + glob.glob(
                        f"{work}/s3data/bench/prod/bench/*.dump.zst")
                    if not out or (name != "dbkeep" and not glob.glob(f"{work}/s3data/bench/prod/bench/*.dump.zst")):
                        failed.append(f"{name} run {i + 1}: no archive where expected")
                        continue
                    sizes[name] = os.path.getsize(out[0])
                else:
                    sizes[name] = os.path.getsize(pipeline_out)
                results[name].append((wall, cpu, rss))
                print(f"  {name:9} run {i + 1}: {wall:6.2f} s wall, {cpu:6.2f} s cpu, "
                      f"{rss / 1024:6.1f} MiB peak RSS", flush=True)
        if not args.no_restore:
            restore_runs(args, cluster, cfg, bin_dir, work, env, results, failed)
        lines = report(results, sizes, args, size)
        print("\n".join(lines))
        os.makedirs(f"{ROOT}/bench/results", exist_ok=True)
        out = f"{ROOT}/bench/results/{datetime.date.today()}-backup.md"
        with open(out, "w") as f:
            f.write("\n".join(lines) + "\n")
        print(f"written to {out}")
    finally:
        if s3_server:
            s3_server.terminate()
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    if failed:
        print("FAILED RUNS:\n" + "\n".join(failed), file=sys.stderr)
        sys.exit(1)


def report(results, sizes, args, table_size):
    def med(name, idx):
        return statistics.median(r[idx] for r in results[name])

    def rng(name, idx, scale=1.0, fmt="{:.2f}"):
        vals = [r[idx] / scale for r in results[name]]
        return f"{fmt.format(statistics.median(vals))} ({fmt.format(min(vals))}–{fmt.format(max(vals))})"

    lines = [
        f"# Backup benchmark, {datetime.date.today()}",
        "",
        f"Table `r` of shared/TESTING.md, {args.rows} rows, {table_size}; {os.cpu_count()} cores; "
        f"{args.runs} alternating runs each, median (min–max).",
        "",
        "| run | wall s | cpu s | peak RSS MiB | output MiB | wall vs pipeline | wall vs dbkeep local |",
        "|---|---|---|---|---|---|---|",
    ]
    base = med("pipeline", 0) if results["pipeline"] else None
    local = med("dbkeep", 0) if results.get("dbkeep") else None
    restore_base = med("restore: pg_restore -Z0", 0) if results.get("restore: pg_restore -Z0") else None
    for name in results:
        if not results[name]:
            lines.append(f"| {name} | failed | | | | | |")
            continue
        if name.startswith("restore"):
            ratio = f"{med(name, 0) / restore_base:.3f}× pg_restore" if restore_base else "n/a"
        else:
            ratio = f"{med(name, 0) / base:.3f}×" if base else "n/a"
        vs_local = f"{med(name, 0) / local:.3f}×" if local and name.startswith("dbkeep") else ""
        out = f"{sizes[name] / 2**20:.1f}" if name in sizes else ""
        lines.append(f"| {name} | {rng(name, 0)} | {rng(name, 1)} | {rng(name, 2, 1024, '{:.1f}')} | "
                     f"{out} | {ratio} | {vs_local} |")
    lines += ["", "pipeline = `pg_dump -Fc -Z0 | zstd -3 -T2 > f`; dbkeep = `dbkeep backup` "
              "(zstd level 3, multithreaded, sha256, fsync, manifest); dbkeep+s3 = local and S3 from "
              "one stream; dbkeep-s3 = S3 only (16 MiB parts, 2 in flight). The S3 server is s3s-fs "
              "on loopback (examples/s3_server.rs), sharing the 2 cores. Peak RSS is "
              "/usr/bin/time's maximum over dbkeep and its pg_dump child."]
    return lines


if __name__ == "__main__":
    main()
