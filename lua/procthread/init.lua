-- procthread: real OS threads and processes for Lua, behind one interface.
-- The C core (procthread.core) does the work; this layer adds what is
-- better written in Lua: pools.
local core = require "procthread.core"

local M = {}
for k, v in pairs(core) do M[k] = v end

-- pt.pool(kind, n [, opts]): see lua/procthread/pool.lua.
function M.pool(kind, n, opts)
  return require("procthread.pool").new(M, kind, n, opts)
end

return M
