#!/bin/sh
# JSON {"message": "..."} in, a cow saying it out. Plain POSIX shell: runs in any image.
message="Moo"
if [ -n "$INPUT_FILE_PATH" ] && [ -s "$INPUT_FILE_PATH" ]; then
  # The value of "message", without needing jq.
  found=$(tr -d '\n' < "$INPUT_FILE_PATH" | sed -n 's/.*"message"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p')
  [ -n "$found" ] && message="$found"
fi
line=$(printf '%s' "$message" | sed 's/./-/g')
printf ' -%s-\n< %s >\n -%s-\n' "$line" "$message" "$line"
cat <<'COW'
        \   ^__^
         \  (oo)\_______
            (__)\       )\/\
                ||----w |
                ||     ||
COW
