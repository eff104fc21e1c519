-- spec/blocked.lua: the handshake the channel and sync specs make before
-- a cancel or a wake: wait (bounded) until a worker sleeps in the kernel.
local H = require "helper"

return function(w, timeout)
  local path = w.kind == "thread" and ("/proc/self/task/" .. w.id .. "/stat")
                                   or ("/proc/" .. w.id .. "/stat")
  return H.eventually(function()
    local f = io.open(path)
    local s = f and f:read("*l"); if f then f:close() end
    return s and s:match("^%d+ %b() (%a)") == "S"
  end, timeout or 10)
end
