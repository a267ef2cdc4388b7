-- One decision for one client (KEYS and ARGV as decide.lua takes them): the hot path when it
-- applies (appended to hot.lua; lib.lua and decide.lua follow, and then decide()).
do
  local reply = decide_fast(KEYS, ARGV, clock())
  if reply then return reply end
end
