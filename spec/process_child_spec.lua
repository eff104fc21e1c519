-- spec/process_child_spec.lua: what a process worker's child does between
-- the fork and running fn (process.c child_main, lifecycle.c lifeline).
local H = require "helper"

describe("a process worker's child", function()
  local before
  before_each(function() before = H.snapshot() end)
  after_each(function() H.check(before) end)

  it("sets os.exit without reading a global: a strict _G that raises on os does not reach it", function()
    -- the child used to look os up with lua_getglobal, outside any
    -- protected call: the strict __index raised in the child, which then
    -- ran on in the caller's code (and left through its atexit handlers)
    local status, out = H.fresh([[
      local pt = require "procthread"
      os = nil
      setmetatable(_G, { __index = function(_, k) error("strict: " .. tostring(k), 2) end })
      local ok, a, b = pcall(function()
        return pt.spawn_process(function() return 42 end):join(20)
      end)
      io.write("ran:", tostring(ok), ":", tostring(a), ":", tostring(b), "\n")
    ]])
    assert.are.equal(0, status, out)
    assert.are.equal("ran:true:true:42\n", out)
  end)
end)
