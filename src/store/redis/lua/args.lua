-- The arguments every decision and sweep call opens with (redis/args.rs packs them): what the
-- calls share, then the policies, which the calls name by number (from 0).
local client_ret, session_ret, slack, stats_ret, events_max =
  struct.unpack('>I6I6I6I6I6', ARGV[1])
local POLICIES = {}
for n = 0, #ARGV[2] / 14 - 1 do
  local idle, max, inactivity, restart = struct.unpack('>I6I6BB', ARGV[2], n * 14 + 1)
  POLICIES[n] = {idle = idle, max = max > 0 and max or nil, inactivity = inactivity == 1,
                 mode = inactivity == 1 and 'inactivity' or 'background', restart = restart == 1}
end
