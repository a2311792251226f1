#!/bin/sh
# A script that fails: the watchdog answers 500 with X-Exit-Code: 3 and the logs.
echo "checking the input..."
echo "the input is not an image" >&2
exit 3
