-- procthread: real OS threads and processes for Lua, behind one interface.
local core = require "procthread.core"

local M = {}
for k, v in pairs(core) do M[k] = v end

return M
