#!/usr/bin/env lua
-- procthread-lab as the rock installs it (docs/lab.md).  luarocks wraps
-- this Lua script in a launcher that runs the interpreter the rock was
-- built for, with the rock tree on its paths, so the lab runs on the Lua
-- whose procthread.core it loads.  From a checkout, use bin/procthread-lab.
local ok, err = pcall(require, "procthread.core")
if not ok then
  io.stderr:write(("procthread-lab: %s cannot load procthread.core (was the rock installed for another Lua?): %s\n")
    :format(_VERSION, tostring(err)))
  os.exit(2)
end
local code = require("procthread.lab.main").main(arg)
io.stdout:flush(); io.stderr:flush()
os.exit(code)
