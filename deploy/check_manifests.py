#!/usr/bin/env python3
"""The named checks deploy/validate.sh runs on rendered and plain Kubernetes manifests.

    python3 deploy/check_manifests.py [--self-test] FILE.yaml...
    python3 deploy/check_manifests.py --extract DIR FILE.yaml...

`--extract` writes every `*.toml` key of the ConfigMaps in the files to DIR (the set's
pipeline files, for `pipeline validate`) and prints their paths.

Every CronJob in the files (one set: the ConfigMaps it mounts must be among them) must pass
each check below; each prints `ok` or `FAIL` with the check's name, file and object, and the
exit code is 1 if any failed. `--self-test` breaks a copy of every CronJob in one way per
check and expects exactly that check to fail, so no check can pass by accident.

Checks (docs/guarantees.md names them):
  forbid               concurrencyPolicy: Forbid
  non-root             runAsNonRoot, a non-zero uid, no privilege escalation, read-only root
                       file system, every capability dropped, seccomp RuntimeDefault
  deadline             the Job's activeDeadlineSeconds is above the longest stage
                       `limits.timeout` of the pipeline file it runs (24h for a stage without
                       one), so the pipeline's own deadline fails the run first
  grace                terminationGracePeriodSeconds above pipeline's 15 s stop after SIGTERM
  retry-not-racing     restartPolicy Never, podReplacementPolicy Failed, backoffLimit set,
                       exit codes 2 and 3 fail the Job without retry
  starting-deadline    startingDeadlineSeconds set
  pipeline-file        the pipeline file is a ConfigMap key mounted with subPath at
                       $PIPELINE_DIR/NAME.toml, and the container runs `run NAME`
  writable-dirs        PIPELINE_STATE_DIR and PIPELINE_CACHE_DIR lie on mounted volumes (the
                       root file system is read-only)
  no-literal-secrets   the pipeline file's secret keys (url, password, tokens, keys) come
                       from ${env:…}, never written into the ConfigMap
"""

import copy
import os
import re
import sys
import tomllib

import yaml

DEFAULT_STAGE_TIMEOUT = 86400  # a stage without limits.timeout: 24h (host/src/config)
SIGTERM_STOP_SECONDS = 15  # pipeline exits within 15 s of SIGTERM (README, "Exit codes")
SECRET_KEYS = {
    "url",
    "password",
    "bearer_token",
    "access_key_id",
    "secret_access_key",
    "session_token",
    "passphrase",
    "token",
}


class CheckError(Exception):
    pass


def duration(text, where):
    """Seconds of a pipeline duration ("90s", "30m", "6h", "1d", plain seconds), after
    ${env:NAME:-default} takes its default; an ${env:NAME} without one cannot be known."""
    m = re.fullmatch(r"\$\{env:[A-Za-z_][A-Za-z0-9_]*(?::-(.*))?\}", text.strip())
    if m:
        if m.group(1) is None:
            raise CheckError(f"{where}: `{text}` comes from the environment without a default: cannot tell the timeout")
        text = m.group(1)
    m = re.fullmatch(r"(\d+)\s*(s|m|min|h|d)?", text.strip())
    if not m or int(m.group(1)) == 0:
        raise CheckError(f"{where}: `{text}` is not a duration pipeline reads")
    unit = {None: 1, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}[m.group(2)]
    return int(m.group(1)) * unit


def longest_timeout(pipeline_toml, where):
    doc = tomllib.loads(pipeline_toml)
    stages = []
    if "source" in doc:
        stages.append(("source", doc["source"]))
    for role in ("transform", "sink"):
        stages += [(f"{role}[{i}]", t) for i, t in enumerate(doc.get(role, []))]
    if not stages:
        raise CheckError(f"{where}: the pipeline file has no stages")
    longest = 0
    for path, table in stages:
        timeout = table.get("limits", {}).get("timeout")
        seconds = DEFAULT_STAGE_TIMEOUT if timeout is None else duration(str(timeout), f"{where}: {path}.limits.timeout")
        longest = max(longest, seconds)
    return longest


def pod_of(cronjob):
    return cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def container_of(cronjob):
    containers = [c for c in pod_of(cronjob)["containers"] if c["name"] == "pipeline"]
    if len(containers) != 1:
        raise CheckError("no container named `pipeline`")
    return containers[0]


def env_of(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def pipeline_file(cronjob, configmaps):
    """The pipeline file a CronJob runs: (name, TOML text)."""
    container = container_of(cronjob)
    env = env_of(container)
    pipeline_dir = env.get("PIPELINE_DIR")
    if not pipeline_dir:
        raise CheckError("PIPELINE_DIR is not set")
    args = container.get("args", [])
    if "run" not in args or args.index("run") + 1 >= len(args):
        raise CheckError(f"the container does not run `pipeline run NAME` (args: {args})")
    name = args[args.index("run") + 1]
    volumes = {v["name"]: v for v in pod_of(cronjob).get("volumes", [])}
    mount = [m for m in container.get("volumeMounts", []) if m["mountPath"] == f"{pipeline_dir}/{name}.toml"]
    if not mount:
        raise CheckError(f"nothing is mounted at {pipeline_dir}/{name}.toml")
    mount = mount[0]
    if mount.get("subPath") != f"{name}.toml":
        raise CheckError(
            f"{pipeline_dir}/{name}.toml is not mounted with subPath `{name}.toml`: the lock and "
            "history keys would change with every ConfigMap update"
        )
    volume = volumes.get(mount["name"], {})
    if "configMap" not in volume:
        raise CheckError(f"volume `{mount['name']}` is not a ConfigMap")
    cm_name = volume["configMap"]["name"]
    if cm_name not in configmaps:
        raise CheckError(f"the ConfigMap `{cm_name}` is not among the checked manifests")
    data = configmaps[cm_name].get("data", {})
    if f"{name}.toml" not in data:
        raise CheckError(f"the ConfigMap `{cm_name}` has no key `{name}.toml`")
    return name, data[f"{name}.toml"]


def check_forbid(cj, _cms):
    policy = cj["spec"].get("concurrencyPolicy")
    if policy != "Forbid":
        raise CheckError(f"concurrencyPolicy is {policy!r}, not Forbid")


def check_non_root(cj, _cms):
    pod = pod_of(cj).get("securityContext", {})
    sc = container_of(cj).get("securityContext", {})
    merged = {**pod, **{k: v for k, v in sc.items() if k in ("runAsNonRoot", "runAsUser", "seccompProfile")}}
    if merged.get("runAsNonRoot") is not True:
        raise CheckError("runAsNonRoot is not true")
    if merged.get("runAsUser", 0) == 0:
        raise CheckError("runAsUser is not set to a non-zero uid")
    if sc.get("allowPrivilegeEscalation") is not False:
        raise CheckError("allowPrivilegeEscalation is not false")
    if sc.get("readOnlyRootFilesystem") is not True:
        raise CheckError("readOnlyRootFilesystem is not true")
    if "ALL" not in sc.get("capabilities", {}).get("drop", []):
        raise CheckError("capabilities.drop does not hold ALL")
    if sc.get("privileged"):
        raise CheckError("the container is privileged")
    if merged.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        raise CheckError("seccompProfile is not RuntimeDefault")


def check_deadline(cj, cms):
    _, text = pipeline_file(cj, cms)
    longest = longest_timeout(text, "pipeline file")
    deadline = cj["spec"]["jobTemplate"]["spec"].get("activeDeadlineSeconds")
    if deadline is None:
        raise CheckError("activeDeadlineSeconds is not set")
    if deadline <= longest:
        raise CheckError(f"activeDeadlineSeconds {deadline} is not above the longest stage timeout ({longest} s)")
    return f"{deadline} s > {longest} s"


def check_grace(cj, _cms):
    grace = pod_of(cj).get("terminationGracePeriodSeconds", 30)
    if grace <= SIGTERM_STOP_SECONDS:
        raise CheckError(f"terminationGracePeriodSeconds {grace} leaves pipeline no time to stop (it needs up to {SIGTERM_STOP_SECONDS} s)")


def check_retry_not_racing(cj, _cms):
    job = cj["spec"]["jobTemplate"]["spec"]
    if pod_of(cj).get("restartPolicy") != "Never":
        raise CheckError("restartPolicy is not Never")
    if job.get("podReplacementPolicy") != "Failed":
        raise CheckError("podReplacementPolicy is not Failed: a retry could start while the failed pod still stops")
    if "backoffLimit" not in job:
        raise CheckError("backoffLimit is not set")
    fail_codes = set()
    for rule in job.get("podFailurePolicy", {}).get("rules", []):
        codes = rule.get("onExitCodes", {})
        if rule.get("action") == "FailJob" and codes.get("operator") == "In":
            fail_codes |= set(codes.get("values", []))
    if not {2, 3} <= fail_codes:
        raise CheckError(f"exit codes 2 and 3 do not fail the Job at once (FailJob on {sorted(fail_codes)})")


def check_starting_deadline(cj, _cms):
    if not cj["spec"].get("startingDeadlineSeconds"):
        raise CheckError("startingDeadlineSeconds is not set")


def check_pipeline_file(cj, cms):
    name, text = pipeline_file(cj, cms)
    tomllib.loads(text)
    return f"{name}.toml"


def check_writable_dirs(cj, _cms):
    container = container_of(cj)
    env = env_of(container)
    mounts = [m["mountPath"].rstrip("/") for m in container.get("volumeMounts", []) if not m.get("readOnly")]
    for var in ("PIPELINE_STATE_DIR", "PIPELINE_CACHE_DIR"):
        path = env.get(var)
        if not path:
            raise CheckError(f"{var} is not set")
        if not any(path == m or path.startswith(m + "/") for m in mounts):
            raise CheckError(f"{var}={path} is on no writable volume (the root file system is read-only)")


def check_no_literal_secrets(cj, cms):
    _, text = pipeline_file(cj, cms)
    doc = tomllib.loads(text)

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                if k in SECRET_KEYS and isinstance(v, str) and v and "${env:" not in v:
                    if k != "url" or re.search(r"://[^/@]*:[^/@]*@", v):
                        raise CheckError(f"{path}{k} is written into the ConfigMap: take it from ${{env:…}} and a Secret")
                walk(v, f"{path}{k}.")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path[:-1]}[{i}].")

    walk(doc, "")


CHECKS = {
    "forbid": check_forbid,
    "non-root": check_non_root,
    "deadline": check_deadline,
    "grace": check_grace,
    "retry-not-racing": check_retry_not_racing,
    "starting-deadline": check_starting_deadline,
    "pipeline-file": check_pipeline_file,
    "writable-dirs": check_writable_dirs,
    "no-literal-secrets": check_no_literal_secrets,
}


def breakers():
    """One way to break each check, applied to a copy of a CronJob and its ConfigMaps."""

    def job(cj):
        return cj["spec"]["jobTemplate"]["spec"]

    def sc(cj):
        return container_of(cj).setdefault("securityContext", {})

    def toml_of(cj, cms):
        name, _ = pipeline_file(cj, cms)
        cm = pod_of(cj)["volumes"]
        cm_name = next(v["configMap"]["name"] for v in cm if "configMap" in v)
        return cms[cm_name]["data"], f"{name}.toml"

    def longer_timeout(cj, cms):
        data, key = toml_of(cj, cms)
        longest = longest_timeout(data[key], "self-test")
        job(cj)["activeDeadlineSeconds"] = longest

    def literal_password(cj, cms):
        data, key = toml_of(cj, cms)
        data[key] += '\n[[notify]]\nplugin = "webhook"\nurl = "https://hooks.example.com/x"\nbearer_token = "s3cr3t-t0ken"\n'

    def whole_configmap(cj, _cms):
        for m in container_of(cj)["volumeMounts"]:
            m.pop("subPath", None)

    def state_on_root(cj, _cms):
        for e in container_of(cj)["env"]:
            if e["name"] == "PIPELINE_STATE_DIR":
                e["value"] = "/home/pipeline/state"

    return {
        "forbid": lambda cj, _: cj["spec"].update(concurrencyPolicy="Allow"),
        "non-root": lambda cj, _: sc(cj).update(readOnlyRootFilesystem=False),
        "deadline": longer_timeout,
        "grace": lambda cj, _: pod_of(cj).update(terminationGracePeriodSeconds=10),
        "retry-not-racing": lambda cj, _: job(cj).update(podReplacementPolicy="TerminatingOrFailed"),
        "starting-deadline": lambda cj, _: cj["spec"].pop("startingDeadlineSeconds", None),
        "pipeline-file": whole_configmap,
        "writable-dirs": state_on_root,
        "no-literal-secrets": literal_password,
    }


def run_checks(cronjob, configmaps):
    """{check name: None if it passed, else the error}."""
    results = {}
    for name, check in CHECKS.items():
        try:
            check(cronjob, configmaps)
            results[name] = None
        except (CheckError, KeyError, TypeError, tomllib.TOMLDecodeError) as e:
            results[name] = f"{type(e).__name__}: {e}" if not isinstance(e, CheckError) else str(e)
    return results


def main(argv):
    self_test = "--self-test" in argv
    files = [a for a in argv if a != "--self-test"]
    extract = None
    if files[:1] == ["--extract"]:
        if len(files) < 2:
            print(__doc__, file=sys.stderr)
            return 2
        extract, files = files[1], files[2:]
    if not files:
        print(__doc__, file=sys.stderr)
        return 2
    cronjobs, configmaps = [], {}
    for f in files:
        with open(f) as fh:
            for doc in yaml.safe_load_all(fh):
                if not doc:
                    continue
                if doc.get("kind") == "CronJob":
                    cronjobs.append((f, doc))
                elif doc.get("kind") == "ConfigMap":
                    configmaps[doc["metadata"]["name"]] = doc
    if extract is not None:
        for cm_name, cm in configmaps.items():
            for key, text in (cm.get("data") or {}).items():
                if key.endswith(".toml"):
                    path = f"{extract}/{cm_name}/{key}"
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    with open(path, "w") as fh:
                        fh.write(text)
                    print(path)
        return 0
    if not cronjobs:
        print(f"FAIL no CronJob in {' '.join(files)}")
        return 1
    passed = failed = 0
    for f, cj in cronjobs:
        where = f"{f}: CronJob/{cj['metadata']['name']}"
        if self_test:
            for name, brk in breakers().items():
                broken, broken_cms = copy.deepcopy(cj), copy.deepcopy(configmaps)
                brk(broken, broken_cms)
                errors = run_checks(broken, broken_cms)
                if errors[name]:
                    passed += 1
                    print(f"ok   self-test {name}: fails when broken ({errors[name]})")
                else:
                    failed += 1
                    print(f"FAIL self-test {name}: a broken {where} still passes it")
            continue
        for name, error in run_checks(cj, configmaps).items():
            if error:
                failed += 1
                print(f"FAIL {name:<19} {where}: {error}")
            else:
                passed += 1
                print(f"ok   {name:<19} {where}")
    # Not "N passed, N failed": .ci/run's closing lines are cargo test's to report.
    print(f"named checks: {passed} ok, {failed} FAILED" if failed else f"named checks: all {passed} ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
