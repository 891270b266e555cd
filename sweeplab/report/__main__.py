"""`python -m sweeplab.report` is `sweeplab-report`."""

from sweeplab.report.cli import main

main()
