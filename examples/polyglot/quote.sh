#!/usr/bin/env bash
# A bash processor: puts the configured mark before each line of text.
# Request and reply are one JSON object per line; the text stays JSON-escaped throughout.
set -u
mark=">"
if [[ ${ELASTICCODE_CONFIG:-} =~ \"mark\":\ ?\"([^\"\\]*)\" ]]; then
  mark=${BASH_REMATCH[1]}
fi
echo "quote.sh started (pid $$), mark '$mark'" >&2
while IFS= read -r request; do
  if [[ $request =~ \"payload\":\"(([^\"\\]|\\.)*)\" ]]; then
    text=${BASH_REMATCH[1]}
    printf '{"outputs":[{"payload":"%s %s","attributes":{"quoted_by":"bash"}}]}\n' "$mark" "$text"
  else
    echo '{"reject":"quote.sh takes text payloads"}'
  fi
done
