"""Runs a command and prints its stdout, then a JSON line with the peak resident memory of
the largest process it started (ru_maxrss of the waited-for children, in MB).

    peak_rss.py COMMAND [ARGS...]
"""
import json
import resource
import subprocess
import sys

out = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, text=True)
sys.stdout.write(out.stdout)
if out.returncode != 0:
    raise SystemExit(out.returncode)
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
