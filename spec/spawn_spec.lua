-- Spawning at speed (issue 12): the mechanisms that make a spawn + join
-- cheap, each checked where it could break.
local pt = require "procthread"
local H = require "helper"

describe("spawn", function()
  H.no_leaks()

  describe("process join", function()
    -- A sleeping join learns from its sleep (the drain eventfd readable)
    -- that the results do not fit the pipe, and reads nothing before it.
    -- If it missed that, it would sleep on an fd that stays readable and
    -- never read the pipe: the child would wait for room until the timeout.
    for _, timeout in ipairs { 10, math.huge } do
      it("a sleeping join (" .. tostring(timeout) .. ") reads results bigger than the pipe", function()
        local status, out = H.fresh(([[
          local pt = require "procthread"
          for i = 1, 3 do
            local w = pt.spawn_process(function(n) return ("r"):rep(n), n end, 2^20 + i)
            local ok, v, n = w:join(%s)
            print(ok, v and #v, n)
          end
        ]]):format(timeout == math.huge and "math.huge" or timeout))
        assert.are.equal(0, status, out)
        for i = 1, 3 do
          assert.matches(("true%%s+%d%%s+%d"):format(2^20 + i, 2^20 + i), out)
        end
      end)
    end
  end)
end)
