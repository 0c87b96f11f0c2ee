"""A plain pyinfra deploy using the generic ``files.batch`` operation (no Synapse): N small files
under /etc/demo/conf.d plus one templated file, shipped and applied in one command.

Host data (from the test's inventory): ``demo_count`` files; ``demo_edits`` maps a file number to
extra content; ``demo_check`` a check command for the templated file. The hook appends the
changed paths to /var/tmp/demo-changed, one run's paths after a ``--`` line.
"""

from pyinfra import host

from deploys.operations.files import BatchFile, batch

count = host.data.get("demo_count", 200)
edits = host.data.get("demo_edits", {})
files = [
    BatchFile(
        f"/etc/demo/conf.d/{n:04d}.conf",
        content=f"id = {n}\n{edits.get(str(n), '')}",
        mode=0o640,
    )
    for n in range(count)
]
files.append(
    BatchFile(
        "/etc/demo/demo.conf",
        template="tests/batch/demo.conf.j2",
        context={"count": count},
        check=host.data.get("demo_check"),
    )
)
batch(
    name=f"Ship {count + 1} demo files",
    files=files,
    owned_globs=["/etc/demo/conf.d/*.conf"],
    on_change="(echo --; cat) >> /var/tmp/demo-changed",
)
