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

-- The machine's CPU time so far, from the "cpu" line of /proc/stat (in
-- USER_HZ ticks of 1/100 s), in seconds summed over the CPUs: busy (user,
-- nice, system, irq, softirq, steal) and steal (the time the hypervisor
-- ran something else while a vCPU of this machine wanted to run); nil
-- when /proc cannot say.
function M.machine_cpu()
  local f = {}
  for x in ((M.read_file("/proc/stat") or ""):match("^cpu +([^\n]*)") or ""):gmatch("%d+") do f[#f + 1] = tonumber(x) end
  if #f < 8 then return nil end
  return { busy = (f[1] + f[2] + f[3] + f[6] + f[7] + f[8]) / 100, steal = f[8] / 100 }
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
