-- procthread: real OS threads and processes for Lua, behind one interface.
-- The C core (procthread.core) does the work; this layer adds what is
-- better written in Lua: pools.
local core = require "procthread.core"

local M = {}
for k, v in pairs(core) do M[k] = v end
M._exit_policy = nil

-- pt.configure: at_exit and exit_grace are the lifecycle's (lifecycle.c);
-- the other keys go to the core.  Everything is checked before anything
-- is applied.
function M.configure(...)
  local opts = ...
  if type(opts) ~= "table" then
    -- raised here, at the caller's level (a tail call into the core
    -- would blame this line)
    error(("bad argument #1 to 'configure' (table expected, got %s)")
      :format(select("#", ...) == 0 and "no value" or type(opts)), 2)
  end
  local rest, mine = {}, false
  for k, v in pairs(opts) do
    if k == "at_exit" or k == "exit_grace" then mine = true else rest[k] = v end
  end
  local a, g = opts.at_exit, opts.exit_grace
  if a ~= nil and a ~= "wait" and a ~= "stop" then
    error("bad argument #1 to 'configure' (at_exit must be \"wait\" or \"stop\")", 2)
  end
  if g ~= nil and (type(g) ~= "number" or not (g >= 0)) then
    error("bad argument #1 to 'configure' (exit_grace must be a number of seconds >= 0)", 2)
  end
  if next(rest) ~= nil or not mine then
    -- through pcall, so that the core's message carries the caller's
    -- position, not this line's
    local ok, err = pcall(core.configure, rest)
    if not ok then error(err, 2) end
  end
  if mine then core._exit_policy(a, g) end
  return true
end

-- pt.select and pt.as_completed: futures of pools (ready once answered)
-- besides what the core waits on (pipes, and what the C select takes);
-- a list without futures goes to the core as it is.
local function has_future(list)
  local P = package.loaded["procthread.pool"]
  if not P or type(list) ~= "table" then return nil end
  for i = 1, #list do
    if P.is_future(list[i]) then return P end
  end
end

-- Their errors are raised at the caller's line (error(e, 2) here).
function M.select(list, timeout)
  local P = has_future(list)
  local ok, r, i
  if P then ok, r, i = pcall(P.select, core.select, list, timeout)
  else ok, r, i = pcall(core.select, list, timeout) end
  if ok then return r, i end
  error(r, 2)
end

function M.as_completed(list, timeout)
  local ok, it
  if not has_future(list) and core.as_completed then ok, it = pcall(core.as_completed, list, timeout)
  else ok, it = pcall(require("procthread.pool").as_completed, core.select, list, timeout) end
  if ok then return it end
  error(it, 2)
end

-- pt.pool(kind, n [, opts]): see lua/procthread/pool.lua.
function M.pool(kind, n, opts)
  return require("procthread.pool").new(M, kind, n, opts)
end

return M
