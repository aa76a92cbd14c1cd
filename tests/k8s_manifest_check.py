#!/usr/bin/python3
"""Checks `ember k8s` manifests offline (tests/k8s_manifest_test.sh runs it).

For one generated directory: parses every YAML document, checks names, ports,
ranks, counts, volumes, selectors, the scheduler endpoint and the ConfigMap
against the job config and the flags; runs the pods' shell scripts with a
fake `ember` that records its arguments; runs the probe command against a real
`ember scheduler`; and round-trips each object through kubectl's own Go types
(`kubectl set ... --local`, no cluster) to catch unknown fields and wrong types.
"""
import argparse
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import yaml

FAILURES = []


def check(cond, what):
    if not cond:
        FAILURES.append(what)
        print("FAIL: " + what)


def labels(name, component):
    return {"app.kubernetes.io/name": "ember", "app.kubernetes.io/instance": name,
            "app.kubernetes.io/component": component}


def container(obj):
    cs = obj["spec"]["template"]["spec"]["containers"]
    check(len(cs) == 1, f"{obj['kind']}: one container")
    return cs[0]


def script(obj):
    c = container(obj)
    check(c["command"] == ["/bin/sh", "-c"], f"{obj['kind']}: command is /bin/sh -c")
    check(len(c["args"]) == 1, f"{obj['kind']}: one script")
    return c["args"][0]


def run_script(text, job_dir, env, timeout=20):
    """Runs a pod's script with /ember/job replaced by job_dir."""
    text = text.replace("/ember/job", job_dir)
    full = dict(os.environ)
    full.update(env)
    # Its own process group, so that a timeout also ends the `sleep` an idle
    # script is in.
    p = subprocess.Popen(["/bin/sh", "-c", text], env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
        return p.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        return None, out


def read_args(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        args = f.read().split("\n")
    os.unlink(path)
    return [a for a in args if a]


def mounts_and_volumes(obj, a):
    pod = obj["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    for t in obj["spec"].get("volumeClaimTemplates", []):
        vols[t["metadata"]["name"]] = t
    mounts = {m["name"]: m for m in container(obj).get("volumeMounts", [])}
    for n in mounts:
        check(n in vols, f"{obj['kind']}: mount {n} has a volume")
    job = vols.get("job", {}).get("persistentVolumeClaim", {})
    check(job.get("claimName") == a.job_claim, f"{obj['kind']}: job volume is claim {a.job_claim}")
    check(mounts.get("job", {}).get("mountPath") == "/ember/job", f"{obj['kind']}: job volume at /ember/job")
    check(mounts.get("job", {}).get("subPath") == a.name, f"{obj['kind']}: job volume sub-path is the job name")
    role = container(obj)["name"]
    if a.insecure:
        check("keys" not in vols and "keys" not in mounts, f"{obj['kind']}: no keys with --insecure")
    else:
        sec = vols["keys"]["secret"]
        check(sec["secretName"] == a.secret, f"{obj['kind']}: keys from Secret {a.secret}")
        check(sec["defaultMode"] == 0o400, f"{obj['kind']}: keys mode 0400")
        check(sorted(i["key"] for i in sec["items"]) == sorted([role + ".key", "authorized_keys"]),
              f"{obj['kind']}: only the {role} key and authorized_keys")
        check(all(i["key"] == i["path"] for i in sec["items"]), f"{obj['kind']}: key files keep their names")
        check(mounts["keys"]["mountPath"] == "/ember/keys" and mounts["keys"].get("readOnly"),
              f"{obj['kind']}: keys read-only at /ember/keys")
    env = {e["name"]: e for e in container(obj)["env"]}
    ref = env["EMBER_JOB_TOKEN"]["valueFrom"]["secretKeyRef"]
    check(ref == {"name": a.secret, "key": "job-token"}, f"{obj['kind']}: EMBER_JOB_TOKEN from the Secret")
    check(all("value" not in e for e in env.values()), f"{obj['kind']}: no literal environment values")
    return vols, mounts


def free_port():
    s = socket.socket()
    s.bind(("0.0.0.0", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def subset(want, got, path="$"):
    """Every leaf of `want` is in `got` with the same value (lists by index)."""
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return [f"{path}: not a mapping after the round trip"]
        out = []
        for k, v in want.items():
            if k not in got:
                out.append(f"{path}.{k}: dropped by kubectl (not a field of the Kubernetes type)")
            else:
                out += subset(v, got[k], f"{path}.{k}")
        return out
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) < len(want):
            return [f"{path}: list changed"]
        out = []
        for i, v in enumerate(want):
            out += subset(v, got[i], f"{path}[{i}]")
        return out
    return [] if want == got else [f"{path}: {want!r} became {got!r}"]


# Fields newer than some kubectl: (path, the Kubernetes minor version whose
# kubectl knows it). An older kubectl drops them, which says nothing about
# the manifest: Debian 12's kubernetes-client is 1.20, and Indexed Jobs came
# in 1.21. Each such drop is reported as not checked; any other drop fails.
NEWER_FIELDS = {"$.spec.completionMode": 21}


def kubectl_minor(kubectl, tmp):
    env = dict(os.environ, KUBECONFIG=os.path.join(tmp, "no-kubeconfig"))
    p = subprocess.run([kubectl, "version", "--client", "-o", "json"], env=env, capture_output=True, text=True,
                       timeout=60)
    try:
        return int("".join(c for c in json.loads(p.stdout)["clientVersion"]["minor"] if c.isdigit()))
    except (ValueError, KeyError, json.JSONDecodeError):
        check(False, f"kubectl version --client -o json: no client minor version in {p.stdout!r} {p.stderr!r}")
        return 0


def kubectl_round_trip(kubectl, minor, path, obj, tmp):
    """Decodes the object into kubectl's Go types and back, offline."""
    kind = obj["kind"]
    env = dict(os.environ, KUBECONFIG=os.path.join(tmp, "no-kubeconfig"))
    if kind in ("Deployment", "StatefulSet", "Job"):
        cmd = [kubectl, "set", "env", "--local", "-f", path, "-o", "yaml", "EMBER_K8S_CHECK=1"]
    elif kind == "Service":
        sel = ",".join(f"{k}={v}" for k, v in obj["spec"]["selector"].items())
        cmd = [kubectl, "set", "selector", "--local", "-f", path, "-o", "yaml", sel]
    else:  # ConfigMap: kubectl has no typed --local command for it
        cmd = [kubectl, "label", "--local", "-f", path, "-o", "yaml", "ember-k8s-check=1"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    check(p.returncode == 0, f"kubectl {cmd[1]} --local {os.path.basename(path)}: {p.stderr.strip()}")
    if p.returncode != 0:
        return
    back = yaml.safe_load(p.stdout)
    diffs = subset(obj, back)
    for d in diffs:
        field = d.split(":")[0]
        if field in NEWER_FIELDS and minor < NEWER_FIELDS[field] and "dropped by kubectl" in d:
            print(f"NOT CHECKED: {os.path.basename(path)} {field}: kubectl 1.{minor} predates it "
                  f"(1.{NEWER_FIELDS[field]}); the rest of the object was")
            continue
        check(False, f"kubectl round trip of {os.path.basename(path)}: {d}")


def main():
    ap = argparse.ArgumentParser()
    for f in ("dir", "config", "name", "namespace", "job_claim", "secret", "binary", "ember", "tmp"):
        ap.add_argument("--" + f, required=True)
    for f in ("servers", "workers", "port", "server_port", "worker_restarts"):
        ap.add_argument("--" + f, type=int, required=True)
    ap.add_argument("--data_claim", default="")
    ap.add_argument("--data_dir", default="", help="a real data set for the probe's scheduler")
    ap.add_argument("--spill_path", default="")
    ap.add_argument("--spill_size", default="")
    ap.add_argument("--spill_storage_class", default="")
    ap.add_argument("--insecure", action="store_true")
    ap.add_argument("--kubectl", default="")
    a = ap.parse_args()

    docs = {}
    for path in sorted(glob.glob(os.path.join(a.dir, "*.yaml"))):
        with open(path) as f:
            text = f.read()
        check(text.startswith(f"# ember k8s: job {a.name} "), f"{path}: header")
        objs = [d for d in yaml.safe_load_all(text) if d is not None]
        check(len(objs) == 1, f"{path}: one document")
        docs[objs[0]["kind"] + "/" + objs[0]["metadata"]["name"]] = (path, objs[0])
    n = a.name
    want = {f"ConfigMap/{n}-config", f"Service/{n}-scheduler", f"Deployment/{n}-scheduler", f"Service/{n}-servers",
            f"StatefulSet/{n}-server", f"Job/{n}-worker"}
    check(set(docs) == want, f"objects: {sorted(docs)} != {sorted(want)}")
    if set(docs) != want:
        return
    for key, (_, o) in docs.items():
        check(o["metadata"]["namespace"] == a.namespace, f"{key}: namespace {a.namespace}")
        check(o["metadata"]["labels"]["app.kubernetes.io/instance"] == n, f"{key}: instance label")
        check(o["kind"] != "Secret", f"{key}: no Secret is generated")
    cm = docs[f"ConfigMap/{n}-config"][1]
    sched_svc = docs[f"Service/{n}-scheduler"][1]
    sched = docs[f"Deployment/{n}-scheduler"][1]
    srv_svc = docs[f"Service/{n}-servers"][1]
    sts = docs[f"StatefulSet/{n}-server"][1]
    job = docs[f"Job/{n}-worker"][1]

    # The ConfigMap holds the config file byte for byte.
    with open(a.config) as f:
        check(cm["data"] == {"job.conf": f.read()}, "ConfigMap: job.conf is the config file's text")

    # Services select exactly their pods, on their ports.
    for svc, work, role, port in ((sched_svc, sched, "scheduler", a.port), (srv_svc, sts, "server", a.server_port)):
        pod_labels = work["spec"]["template"]["metadata"]["labels"]
        check(svc["spec"]["selector"] == labels(n, role), f"Service {role}: selector")
        check(svc["spec"]["selector"].items() <= pod_labels.items(), f"Service {role}: selector matches the pods")
        check(work["spec"]["selector"]["matchLabels"].items() <= pod_labels.items(), f"{role}: matchLabels")
        check([(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(port, port)], f"Service {role}: port")
        check([p["containerPort"] for p in container(work)["ports"]] == [port], f"{role}: containerPort {port}")
    for other in (sched, job):
        check(not (srv_svc["spec"]["selector"].items() <= other["spec"]["template"]["metadata"]["labels"].items()),
              f"server Service does not select {other['kind']} pods")
    check(srv_svc["spec"]["clusterIP"] == "None" and srv_svc["spec"]["publishNotReadyAddresses"] is True,
          "server Service: headless, publishes not-ready pods")
    check(sts["spec"]["serviceName"] == srv_svc["metadata"]["name"], "StatefulSet: serviceName is the headless Service")

    # Counts and restart policies.
    check(sched["spec"]["replicas"] == 1 and sched["spec"]["strategy"]["type"] == "Recreate", "scheduler: 1, Recreate")
    check(sts["spec"]["replicas"] == a.servers, f"StatefulSet: {a.servers} replicas")
    check(sts["spec"]["podManagementPolicy"] == "Parallel", "StatefulSet: Parallel")
    check(job["spec"]["completionMode"] == "Indexed", "Job: Indexed")
    check(job["spec"]["completions"] == a.workers and job["spec"]["parallelism"] == a.workers,
          f"Job: {a.workers} completions and parallelism")
    check(job["spec"]["backoffLimit"] == a.worker_restarts * a.workers, "Job: backoffLimit")
    check(job["spec"]["template"]["spec"]["restartPolicy"] == "OnFailure", "Job: OnFailure")
    for w in (sched, sts):
        check(w["spec"]["template"]["spec"]["restartPolicy"] == "Always", f"{w['kind']}: Always")

    # Volumes and mounts.
    vols, mounts = mounts_and_volumes(sched, a)
    check(vols["config"]["configMap"]["name"] == cm["metadata"]["name"], "scheduler: config volume is the ConfigMap")
    check(mounts["config"]["mountPath"] == "/ember/config", "scheduler: config at /ember/config")
    for obj in (sched, job):
        v, m = mounts_and_volumes(obj, a)
        if a.data_claim:
            check(v["data"]["persistentVolumeClaim"]["claimName"] == a.data_claim, f"{obj['kind']}: data claim")
            check(m["data"]["mountPath"] == "/ember/data" and m["data"]["readOnly"], f"{obj['kind']}: data at /ember/data")
        else:
            check("data" not in v, f"{obj['kind']}: no data volume")
    v, m = mounts_and_volumes(sts, a)
    check("data" not in v and "config" not in v, "servers mount neither data nor config")
    if a.spill_path:
        (t,) = sts["spec"]["volumeClaimTemplates"]
        check(t["metadata"]["name"] == "spill" and t["spec"]["accessModes"] == ["ReadWriteOnce"], "spill: RWO claim")
        check(t["spec"]["resources"]["requests"]["storage"] == a.spill_size, f"spill: {a.spill_size}")
        check(t["spec"].get("storageClassName", "") == a.spill_storage_class, "spill: storage class")
        check(m["spill"]["mountPath"] == a.spill_path, f"servers: spill volume at storage.spill_path {a.spill_path}")
    else:
        check("volumeClaimTemplates" not in sts["spec"], "no spill volume without storage.memory_budget_bytes")

    # The scripts, run with a fake ember that records its arguments.
    tmp = a.tmp
    job_dir = os.path.join(tmp, "jobdir")
    os.makedirs(job_dir, exist_ok=True)
    args_file = os.path.join(tmp, "args")
    fake = {"FAKE_ARGS": args_file}
    endpoint = f"tcp://{n}-scheduler.{a.namespace}.svc.cluster.local:{a.port}"
    sec = ["--insecure"] if a.insecure else ["--keys_dir=/ember/keys"]

    rc, out = run_script(script(sched), job_dir, dict(fake, FAKE_RC="0"))
    got = read_args(args_file)
    check(rc == 0 and got is not None, f"scheduler script ran ember: {out}")
    want_sched = ["scheduler", "--config=/ember/config/job.conf", "--host=0.0.0.0",
                  f"--advertise_host={n}-scheduler.{a.namespace}.svc.cluster.local", f"--port={a.port}",
                  f"--num_servers={a.servers}", f"--num_workers={a.workers}", "--checkpoint_dir=/ember/job/checkpoints",
                  "--export_dir=/ember/job/export", "--metrics_file=/ember/job/metrics.jsonl",
                  "--result_file=/ember/job/result.txt"] + sec + (["--data_dir=/ember/data"] if a.data_claim else [])
    want_sched = [x.replace("/ember/job", job_dir) for x in want_sched]
    check(got == want_sched, f"scheduler args: {got} != {want_sched}")
    # A checkpoint without MANIFEST does not make it resume; one with does.
    os.makedirs(os.path.join(job_dir, "checkpoints", "ckpt-00000001"))
    run_script(script(sched), job_dir, dict(fake, FAKE_RC="0"))
    check("--resume" not in (read_args(args_file) or []), "scheduler: no --resume without a complete checkpoint")
    open(os.path.join(job_dir, "checkpoints", "ckpt-00000001", "MANIFEST"), "w").close()
    run_script(script(sched), job_dir, dict(fake, FAKE_RC="0"))
    check((read_args(args_file) or [])[-1:] == ["--resume"], "scheduler: --resume after a complete checkpoint")
    # A finished job: the result is printed, ember is not started again.
    with open(os.path.join(job_dir, "result.txt"), "w") as f:
        f.write("final: auc=0.8 test\n")
    rc, out = run_script(script(sched), job_dir, fake, timeout=3)
    check(rc is None and read_args(args_file) is None, "finished scheduler idles without starting ember")
    check("final: auc=0.8 test" in out, f"finished scheduler prints the result: {out!r}")
    # ... and obeys SIGTERM at once (the shell is PID 1 in the pod).
    for obj, extra in ((sched, {}), (sts, {"POD_NAME": f"{n}-server-0"})):
        p = subprocess.Popen(["/bin/sh", "-c", script(obj).replace("/ember/job", job_dir)],
                             env=dict(os.environ, **fake, **extra), start_new_session=True)
        time.sleep(0.5)
        p.terminate()
        try:
            rc = p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            rc = None
        try:
            os.killpg(p.pid, signal.SIGKILL)  # whatever is left of the group
        except ProcessLookupError:
            pass
        check(rc == 0, f"{obj['kind']}: an idle pod exits 0 on SIGTERM (rc {rc})")
        check(read_args(args_file) is None, f"{obj['kind']}: an idle pod starts no ember")
    os.unlink(os.path.join(job_dir, "result.txt"))

    for i in range(a.servers):
        pod = f"{sts['metadata']['name']}-{i}"
        rc, out = run_script(script(sts), job_dir, dict(fake, FAKE_RC="3", POD_NAME=pod, POD_IP=f"10.1.0.{i}"))
        got = read_args(args_file)
        want_srv = ["server", f"--scheduler={endpoint}", "--host=0.0.0.0", f"--advertise_host=10.1.0.{i}",
                    f"--port={a.server_port}", f"--rank={i}"] + sec
        check(got == want_srv, f"server {pod} args: {got} != {want_srv}")
        check(rc == 3, f"server script passes ember's failure on (rc {rc})")
    for k in range(a.workers):
        rc, out = run_script(script(job), job_dir, dict(fake, FAKE_RC="3", JOB_COMPLETION_INDEX=str(k)))
        got = read_args(args_file)
        want_w = ["worker", f"--scheduler={endpoint}", f"--rank={k}"] + sec
        check(got == want_w, f"worker {k} args: {got} != {want_w}")
        check(rc == 3, f"worker script passes ember's failure on (rc {rc})")
    # SIGTERM to the script (the container's PID 1) reaches ember, and the
    # script exits with it instead of waiting for a result.
    for obj, extra in ((sts, {"POD_NAME": f"{n}-server-0", "POD_IP": "10.1.0.9"}), (job, {"JOB_COMPLETION_INDEX": "1"})):
        env = dict(os.environ, **fake, FAKE_SLEEP="1", **extra)
        p = subprocess.Popen(["/bin/sh", "-c", script(obj).replace("/ember/job", job_dir)], env=env)
        for _ in range(200):
            if os.path.exists(args_file):
                break
            time.sleep(0.05)
        time.sleep(0.2)  # let the script reach `wait`
        p.terminate()
        try:
            rc = p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = None
        check(rc == 143, f"{obj['kind']} script exits 143 on SIGTERM (rc {rc})")
        check(os.path.exists(args_file + ".term"), f"{obj['kind']} script passes SIGTERM on to ember")
        read_args(args_file)
        if os.path.exists(args_file + ".term"):
            os.unlink(args_file + ".term")
    # A worker that ends with the job (the result is there) completes its index.
    rc, out = run_script(script(job), job_dir, dict(fake, FAKE_RC="0", FAKE_RESULT=os.path.join(job_dir, "result.txt"),
                                                     JOB_COMPLETION_INDEX="0"))
    check(rc == 0, f"worker at the job's end exits 0 (rc {rc}): {out}")
    os.unlink(os.path.join(job_dir, "result.txt"))

    # Probes: exec, never a TCP connect (CURVE counts one as a rejected peer).
    for w, port in ((sched, a.port), (sts, a.server_port)):
        c = container(w)
        for p in ("readinessProbe", "livenessProbe"):
            check(list(c[p]) and "exec" in c[p] and "tcpSocket" not in c[p] and "httpGet" not in c[p],
                  f"{w['kind']}: {p} is exec")
        check("readinessProbe" not in container(job) and "livenessProbe" not in container(job), "workers: no probe")
    probe = container(sched)["readinessProbe"]["exec"]["command"]
    probe = [x.replace("/ember/job", job_dir) for x in probe]
    check(subprocess.run(probe).returncode != 0, "scheduler probe fails while nothing listens on its port")
    if a.data_dir:
        log = open(os.path.join(tmp, "probe-scheduler.log"), "w")
        proc = subprocess.Popen([a.ember, "scheduler", f"--config={a.config}", f"--data_dir={a.data_dir}",
                                 "--host=0.0.0.0", "--insecure", f"--port={a.port}", "--exit_with_parent"],
                                stdout=log, stderr=log)
        try:
            passed = False
            for _ in range(300):
                if subprocess.run(probe).returncode == 0:
                    passed = True
                    break
                if proc.poll() is not None:
                    break
                time.sleep(0.1)
            check(passed, "scheduler probe passes once a real `ember scheduler` listens on the port "
                          f"(see {log.name})")
        finally:
            proc.kill()
            proc.wait()
    else:
        print("SKIP: no --data_dir, the probe was not run against a real scheduler")
    open(os.path.join(job_dir, "result.txt"), "w").close()
    check(subprocess.run(probe).returncode == 0, "probe passes once the job has finished")

    if a.kubectl:
        minor = kubectl_minor(a.kubectl, tmp)
        print(f"kubectl client 1.{minor}")
        for key, (path, obj) in docs.items():
            kubectl_round_trip(a.kubectl, minor, path, obj, tmp)
    else:
        print("SKIP: kubectl not found; the manifests were not decoded into Kubernetes' types")


if __name__ == "__main__":
    main()
    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed")
        sys.exit(1)
    print("all checks passed")
