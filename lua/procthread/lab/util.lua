-- procthread.lab.util: the helpers an experiment uses (built-in or a
-- user's).  It depends on the statistics only, never on the harness
-- (procthread.lab), which loads the experiments:
--
--   local util = require "procthread.lab.util"
--   local s = util.summary(results, "join/process")   -- median, p10, ...
--
-- procthread.lab offers the same functions (experiments written before
-- this module say `lab.summary`).
local stats = require "procthread.lab.stats"

local M = {}

function M.pack(...) return { n = select("#", ...), ... } end

function M.plural(kind) return kind == "process" and "processes" or kind .. "s" end

-- Summary (median, p10, ...) of series `key` of a results table.
function M.summary(results, key)
  local s = results.series and results.series[key]
  if not s then return stats.summary({}, 0) end
  return stats.summary(s.samples, s.failed)
end

-- ---- small OS helpers ------------------------------------------------------

function M.read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a"); f:close()
  return s
end

-- The CPUs this process may run on, from /proc/self/status's
-- Cpus_allowed_list ("0-1,4"): a set { [0] = true, [1] = true, ... } and
-- its size; nil when /proc cannot say.  read as for cpu_quota.
function M.allowed_cpus(read)
  local list = ((read or M.read_file)("/proc/self/status") or ""):match("\nCpus_allowed_list:%s*([%d,%-]+)")
  if not list then return nil end
  local set, n = {}, 0
  for a, b in list:gmatch("(%d+)%-?(%d*)") do
    for i = tonumber(a), tonumber(b) or tonumber(a) do
      if not set[i] then set[i], n = true, n + 1 end
    end
  end
  return set, n
end

-- The CPU time so far, from /proc/stat (in USER_HZ ticks of 1/100 s), in
-- seconds summed over the CPUs in `cpus` (a set as allowed_cpus gives;
-- nil: all of them): busy (user, nice, system, irq, softirq, steal) and
-- steal (the time the hypervisor ran something else while a vCPU of this
-- machine wanted to run), and tick: the resolution of a difference of two
-- readings (each line of /proc/stat truncates to a tick, so one tick for
-- the machine's "cpu" line, one a CPU for a sum of "cpuN" lines); nil
-- when /proc cannot say.
function M.machine_cpu(cpus)
  local text, lines, all = M.read_file("/proc/stat") or "", {}, true
  for id, rest in text:gmatch("\ncpu(%d+) +([^\n]*)") do
    if cpus and cpus[tonumber(id)] then lines[#lines + 1] = rest else all = all and not cpus end
  end
  if not cpus or all then lines = { text:match("^cpu +([^\n]*)") or "" } end
  local busy, steal = 0, 0
  for _, line in ipairs(lines) do
    local f = {}
    for x in line:gmatch("%d+") do f[#f + 1] = tonumber(x) end
    if #f < 8 then return nil end
    busy, steal = busy + (f[1] + f[2] + f[3] + f[6] + f[7] + f[8]) / 100, steal + f[8] / 100
  end
  return { busy = busy, steal = steal, tick = #lines / 100 }
end

-- The cores' worth of CPU time a cgroup quota allows this process (a
-- number, 1.5 for "150000 100000"), the smallest along its cgroup and
-- the cgroup's ancestors; nil when none limits it.  cgroup v2's cpu.max
-- ("max 100000" or "<quota> <period>"), or v1's cpu.cfs_quota_us (-1:
-- none) over cpu.cfs_period_us.  read(path) -> text | nil (default: the
-- file's contents; a spec passes its own).
function M.cpu_quota(read)
  read = read or M.read_file
  local cg = "\n" .. (read("/proc/self/cgroup") or "")
  local v2 = cg:match("\n0::(/[^\n]*)")
  local v1 = cg:match("\n%d+:[^:\n]*%f[%w]cpu%f[^%w][^:\n]*:(/[^\n]*)")
  local best
  local function limit(quota, period)
    quota, period = tonumber(quota), tonumber(period)
    if quota and period and quota > 0 and period > 0 and (not best or quota / period < best) then best = quota / period end
  end
  local function walk(path, f)
    while true do
      f(path == "/" and "" or path)
      if path == "/" then return end
      path = path:match("^(.*)/[^/]*$")
      if path == "" then path = "/" end
    end
  end
  if v2 then
    walk(v2, function(p) limit((read("/sys/fs/cgroup" .. p .. "/cpu.max") or ""):match("^(%d+) (%d+)")) end)
  end
  if v1 then
    walk(v1, function(p)
      local dir = "/sys/fs/cgroup/cpu" .. p
      limit(read(dir .. "/cpu.cfs_quota_us"), read(dir .. "/cpu.cfs_period_us"))
    end)
  end
  return best
end

function M.shell_quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- os.execute's result differs between 5.1 (a number) and 5.2+ (true/nil).
function M.execute(cmd)
  local a, _, c = os.execute(cmd)
  if type(a) == "number" then return a == 0 end
  return a == true and (c == nil or c == 0)
end

function M.is_tty(fd)
  return M.execute("test -t " .. (fd or 2))
end

-- package.searchpath for every Lua (5.1 has none).
function M.searchpath(name, path)
  name = name:gsub("%.", "/")
  for tmpl in path:gmatch("[^;]+") do
    local f = tmpl:gsub("%?", name)
    local h = io.open(f, "r")
    if h then h:close(); return f end
  end
  return nil
end

return M
