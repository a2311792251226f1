#!/bin/sh
# Several outputs: a summary and a per-line split of the input, returned as one ZIP.
set -e
mkdir -p "$TMP_OUTPUT_DIR/lines"
wc -c < "$INPUT_FILE_PATH" | tr -d ' ' > "$TMP_OUTPUT_DIR/size.txt"
n=0
while IFS= read -r line || [ -n "$line" ]; do
  n=$((n + 1))
  printf '%s\n' "$line" > "$TMP_OUTPUT_DIR/lines/$n.txt"
done < "$INPUT_FILE_PATH"
echo "split $n lines of $(basename "$INPUT_FILE_PATH")"
