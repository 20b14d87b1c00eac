"""The model repository in an S3 bucket (moto's server on loopback): the same answers as a
folder, a push killed mid-upload, two pushes at once, and the `models` CLI's exit codes."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import s3_server
from deepfm_tfx import model_repository as mr
from deepfm_tfx import object_store
from deepfm_tfx.pipeline import cli
from test_repository_safety import write_saved_model

MODEL = "deepfm"
# Pushes in their own processes, as two machines would run them; a refusal is one `error:` line.
PUSH = """
import sys
from deepfm_tfx import model_repository as mr
try:
    print(mr.push(sys.argv[1], "deepfm", sys.argv[2], {"source_model": sys.argv[3]}))
except mr.RepositoryError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
"""


@pytest.fixture(scope="module")
def s3():
    with s3_server.running() as server:
        yield server


def _padded_saved_model(folder, megabytes):
    """A servable-looking SavedModel whose variables take a while to upload."""
    write_saved_model(folder)
    os.makedirs(os.path.join(folder, "variables"))
    with open(os.path.join(folder, "variables", "variables.data-00000-of-00001"), "wb") as f:
        f.write(os.urandom(megabytes << 20))
    with open(os.path.join(folder, "variables", "variables.index"), "wb") as f:
        f.write(b"index")
    return str(folder)


def _pusher(repo, source, name):
    return subprocess.Popen([sys.executable, "-c", PUSH, repo, source, name], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _stopped_when(process, predicate, timeout=300.0):
    """Runs `process` in 50 ms steps, checking `predicate` while it is stopped, and leaves it stopped
    once it holds: however loaded the machine, the check never races the process."""
    deadline = time.monotonic() + timeout
    process.send_signal(signal.SIGSTOP)
    while not predicate():
        assert process.poll() is None and time.monotonic() < deadline, "the moment never came"
        process.send_signal(signal.SIGCONT)
        time.sleep(0.05)
        process.send_signal(signal.SIGSTOP)


def _uploading(s3, prefix):
    return lambda: bool(s3.client().list_multipart_uploads(Bucket=s3_server.BUCKET, Prefix=prefix).get("Uploads"))


def _scenario(repo, sources):
    """Push, canary, promote, rollback, a held push, release, prune; what a reader sees after each,
    with versions as their order of creation (numbers are clock-based)."""
    seen, created = [], []

    def look(step):
        order = {v: i for i, v in enumerate(created)}
        found = mr.labels(repo, MODEL)
        seen.append((step, [order[v] for v in mr.versions(repo, MODEL)],
                     {k: order[v] for k, v in sorted(found.items())}, mr.held(repo, MODEL) is not None,
                     [(e["record"] or {}).get("pushed_as") for e in mr.list_models(repo, MODEL)]))

    created.append(mr.push(repo, MODEL, sources[0], {"source_model": "a"}))
    look("push")
    created.append(mr.push(repo, MODEL, sources[1], {"source_model": "b"}, push_as="canary"))
    look("canary push")
    mr.promote(repo, MODEL)
    look("promote")
    mr.rollback(repo, MODEL, created[0])
    look("rollback")
    created.append(mr.push(repo, MODEL, sources[0], {"source_model": "c"}))
    look("held push")
    mr.release(repo, MODEL)
    look("release")
    created.append(mr.push(repo, MODEL, sources[1], {"source_model": "d"}))
    look("push after release")
    seen.append(("prune", sorted(created.index(v) for v in mr.prune(repo, MODEL, keep=1))))
    look("after prune")
    with pytest.raises(mr.RepositoryError, match="no version 7"):
        mr.rollback(repo, MODEL, 7)
    return seen


def test_a_repository_in_a_bucket_answers_as_a_folder_does(s3, tmp_path):
    sources = [write_saved_model(tmp_path / "a"), write_saved_model(tmp_path / "b")]
    repo = s3.url("same-as-folder")
    in_bucket = _scenario(repo, sources)
    assert in_bucket == _scenario(str(tmp_path / "folder"), sources)
    assert in_bucket[-1][1:4] == ([3], {"canary": 3, "stable": 3}, False)  # the prune kept only what is in use
    # Nothing but the layout TF Serving reads, the records and the reports: no lease, no leftovers.
    keys = s3.keys("same-as-folder")
    assert "models.config" in keys and ".lease" not in keys
    assert {k.split("/")[1] for k in keys if k.startswith(f"{MODEL}/")} == {
        str(v) for v in mr.versions(repo, MODEL)} | {f"{v}.record.json" for v in mr.versions(repo, MODEL)}


def test_the_models_cli_on_a_bucket_exits_true(s3, tmp_path, capsys):
    repo = s3.url("cli")
    version = mr.push(repo, MODEL, write_saved_model(tmp_path / "a"), {"source_model": "a"})
    assert cli.main(["models", "list", "--model-repository", repo, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["serving_version"] == version and listed["model_repository"] == repo
    assert cli.main(["models", "rollback", "--model-repository", repo, "12345"]) == 2
    assert capsys.readouterr().err.startswith("error: 'deepfm' has no version 12345")
    assert mr.serving_version(repo, MODEL) == version
    # In a process of its own, the exit code is the command's (no abort at exit after using S3).
    done = subprocess.run([os.path.join(os.path.dirname(sys.executable), "deepfm-tfx"), "models", "release",
                           "--model-repository", repo], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "no rollback hold" in done.stdout
    # A store that cannot be reached is an error of its own (1), not the user's input (2).
    done = subprocess.run([os.path.join(os.path.dirname(sys.executable), "deepfm-tfx"), "models", "list",
                           "--model-repository", repo], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, AWS_ENDPOINT_URL=f"http://127.0.0.1:{s3_server.free_port()}"))
    assert done.returncode == 1 and done.stderr.startswith("error: --model-repository s3://"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_push_killed_mid_upload_leaves_the_last_state_and_its_retry_finishes(s3, tmp_path):
    repo = s3.url("killed")
    before = mr.push(repo, MODEL, write_saved_model(tmp_path / "old"), {"source_model": "old"})
    config_before = mr.read_file(repo, "models.config")
    source = _padded_saved_model(tmp_path / "new", 64)
    pusher = _pusher(repo, source, "new")
    # Killed while its variables are going up (a multipart upload under way), before saved_model.pb.
    _stopped_when(pusher, _uploading(s3, "killed/"))
    pusher.send_signal(signal.SIGKILL)
    pusher.wait()
    keys = s3.keys("killed")
    assert ".lease" in keys and not any(k.endswith("/saved_model.pb") and not k.startswith(f"{MODEL}/{before}/")
                                        for k in keys)
    # A reader sees the previous state.
    assert mr.versions(repo, MODEL) == [before] and mr.serving_version(repo, MODEL) == before
    assert mr.read_file(repo, "models.config") == config_before
    # The retry takes over the dead writer's lease, clears its half version, and finishes.
    after = mr.push(repo, MODEL, source, {"source_model": "new"})
    assert mr.versions(repo, MODEL) == [before, after] and mr.serving_version(repo, MODEL) == after
    assert mr.read_record(repo, MODEL, after)["source_model"] == "new"
    keys = s3.keys("killed")
    assert ".lease" not in keys
    assert {k.split("/")[1] for k in keys if k.startswith(f"{MODEL}/")} == {
        str(before), str(after), f"{before}.record.json", f"{after}.record.json"}
    assert mr.local_copy(repo, MODEL, after, str(tmp_path / "cache")) and open(os.path.join(
        mr.local_copy(repo, MODEL, after, str(tmp_path / "cache")), "variables", "variables.data-00000-of-00001"),
        "rb").read() == open(os.path.join(source, "variables", "variables.data-00000-of-00001"), "rb").read()


def test_two_pushes_at_once_one_wins_one_is_refused_and_nothing_is_lost(s3, tmp_path):
    repo = s3.url("race")
    first = _pusher(repo, _padded_saved_model(tmp_path / "first", 64), "first")
    _stopped_when(first, _uploading(s3, "race/"))  # paused mid-upload, lease held: the pushes overlap for sure
    try:
        assert ".lease" in s3.keys("race") and first.poll() is None
        second = _pusher(repo, write_saved_model(tmp_path / "second"), "second")
        out, err = second.communicate(timeout=120)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2, out + err
    assert err.startswith("error: another writer holds s3://") and "nothing was changed" in err, err
    out_first, err_first = first.communicate(timeout=300)
    assert first.returncode == 0, out_first + err_first
    winner = int(out_first)
    assert mr.versions(repo, MODEL) == [winner] and mr.serving_version(repo, MODEL) == winner
    assert mr.read_record(repo, MODEL, winner)["source_model"] == "first"
    # The refused push, run again, lands on top.
    again = subprocess.run([sys.executable, "-c", PUSH, repo, str(tmp_path / "second"), "second"],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert mr.versions(repo, MODEL) == [winner, int(again.stdout)]
    assert mr.serving_version(repo, MODEL) == int(again.stdout)


def test_a_config_written_by_another_writer_meanwhile_is_not_overwritten(s3, tmp_path):
    repo = s3.url("if-match")
    version = mr.push(repo, MODEL, write_saved_model(tmp_path / "a"), {"source_model": "a"})
    store = object_store.Store(repo)
    data, etag = store.get("models.config")
    store.put("models.config", data + b"# another writer\n", if_match=etag)
    with pytest.raises(object_store.PreconditionFailed):
        store.put("models.config", data, if_match=etag)
    with pytest.raises(object_store.PreconditionFailed):
        store.put("models.config", data, if_absent=True)
    assert store.read("models.config").endswith(b"# another writer\n")
    assert mr.serving_version(repo, MODEL) == version


def test_an_expired_lease_is_taken_over_once_and_its_old_holder_must_stop(s3):
    store = object_store.Store(s3.url("lease"))
    slow = object_store.Lease(store, seconds=3)  # long enough to be seen held on a busy machine
    slow.acquire()
    acquired = time.monotonic()
    with pytest.raises(object_store.LeaseHeld, match="another writer holds"):
        object_store.Lease(store).acquire()
    time.sleep(max(0.0, acquired + 3.2 - time.monotonic()))
    taker = object_store.Lease(store)
    taker.acquire()  # expired: taken over with If-Match on the old lease's ETag
    with pytest.raises(object_store.LeaseHeld, match="taken over"):
        slow.renew()  # the slow writer learns it before it names anything in models.config
    slow.release()  # releases nothing of the new holder's
    assert json.loads(store.read(".lease"))["pid"] == os.getpid() and store.read(".lease") is not None
    taker.release()
    assert store.read(".lease") is None


def test_a_pipeline_root_in_no_bucket_or_empty_data_in_one_is_refused_in_one_line(s3, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "--pipeline-root", "s3://no-such-bucket/pipeline", "--model-repository", "repo"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --pipeline-root s3://no-such-bucket/pipeline: ") and "NoSuchBucket" in err
    assert len(err.splitlines()) == 1 and os.listdir(tmp_path) == []  # no local folder named s3:
    assert cli.main(["run", "--data", s3.url("no-data"), "--pipeline-root", "pipeline", "--model-repository",
                     "repo"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --data {s3.url('no-data')}: no objects under it"
    assert not os.path.exists(tmp_path / "repo")  # refused before any work on the repository


def test_data_in_a_bucket_is_mirrored_downloading_only_what_changed(s3, tmp_path):
    client = s3.client()
    for key, body in (("span-1/part-000.csv", b"a\n"), ("span-2/part-000.csv", b"b\n")):
        client.put_object(Bucket=s3_server.BUCKET, Key=f"mirror/{key}", Body=body)
    folder = str(tmp_path / "staged")
    assert object_store.mirror(s3.url("mirror"), folder) == (2, 2)
    first = os.stat(os.path.join(folder, "span-1", "part-000.csv")).st_mtime_ns
    client.put_object(Bucket=s3_server.BUCKET, Key="mirror/span-2/part-000.csv", Body=b"b2\n")
    client.put_object(Bucket=s3_server.BUCKET, Key="mirror/span-3/part-000.csv", Body=b"c\n")
    client.delete_object(Bucket=s3_server.BUCKET, Key="mirror/span-1/part-000.csv")
    assert object_store.mirror(s3.url("mirror"), folder) == (2, 2)
    assert not os.path.exists(os.path.join(folder, "span-1", "part-000.csv")) and first
    assert open(os.path.join(folder, "span-2", "part-000.csv"), "rb").read() == b"b2\n"
    unchanged = os.stat(os.path.join(folder, "span-3", "part-000.csv")).st_mtime_ns
    assert object_store.mirror(s3.url("mirror"), folder) == (0, 2)  # nothing changed: nothing downloaded
    assert os.stat(os.path.join(folder, "span-3", "part-000.csv")).st_mtime_ns == unchanged
