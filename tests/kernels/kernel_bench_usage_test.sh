#!/bin/sh
# kernel_bench's command line: a bad --m list or flag is a usage error (exit status 2) with a message that
# names the problem, before any device is touched, so this runs on machines without a GPU too.
set -u
kb=$1
fail=0
for bad in "0" "128,x" "" "4096,,1" "-5" "12abc"; do
  err=$("$kb" --m "$bad" 2>&1 >/dev/null)
  st=$?
  if [ "$st" -ne 2 ]; then echo "--m '$bad': exit status $st, want 2"; fail=1; fi
  case "$err" in
    *"--m wants a comma-separated list"*"'$bad'"*) ;;
    *) echo "--m '$bad': message '$err' should explain --m and quote the list"; fail=1 ;;
  esac
done
"$kb" --m > /dev/null 2>&1
st=$?
[ "$st" -eq 2 ] || { echo "--m without a list: exit status $st, want 2"; fail=1; }
"$kb" --quik > /dev/null 2>&1
st=$?
[ "$st" -eq 2 ] || { echo "unknown flag: exit status $st, want 2"; fail=1; }
# --no-pdl is a flag of its own: parsing goes on past it to the bad --m list (without running anything).
err=$("$kb" --no-pdl --m 0 2>&1 >/dev/null)
case "$err" in
  *"--m wants a comma-separated list"*) ;;
  *) echo "--no-pdl --m 0: message '$err' should be about --m (--no-pdl accepted)"; fail=1 ;;
esac
exit $fail
