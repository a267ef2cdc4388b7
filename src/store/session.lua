-- One decision for one client (appended to prelude.lua, lib.lua and decide.lua): KEYS and ARGV
-- as decide.lua describes them.
return decide(KEYS, ARGV)
