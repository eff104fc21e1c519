-- procthread.lab.json: results.json through dkjson (Debian: lua-dkjson),
-- with the two things the lab needs that dkjson does not do by itself:
-- every number is written so that it reads back as the same double (dkjson
-- writes tostring(), 14 digits), and object keys are written sorted, so two
-- runs diff cleanly.  docs/lab.md says why dkjson and not lua-cjson.
local M = {}

M.MISSING = "the lab reads and writes results.json with dkjson, which is not installed"
  .. " (Debian: lua-dkjson; or: luarocks install dkjson)"

local has, dkjson = pcall(require, "dkjson")

-- nil, or the message saying what to install
function M.missing()
  if has and type(dkjson) == "table" and dkjson.encode then return nil end
  return M.MISSING
end

local function lib()
  local why = M.missing()
  if why then error(why, 3) end
  return dkjson
end

-- The shortest "%.Ng" that reads back as v (nil for NaN and infinities,
-- which dkjson writes as null); floats keep a ".0" on Luas that tell
-- floats from integers.
local function exact(v)
  if v ~= v or v == math.huge or v == -math.huge then return nil end
  if math.type and math.type(v) == "integer" then return tostring(v) end
  for digits = 15, 17 do
    local s = ("%." .. digits .. "g"):format(v)
    if tonumber(s) == v then
      if math.type and not s:find("[%.eEn]") then s = s .. ".0" end
      return s
    end
  end
  return nil
end

local raw = { __tojson = function(self) return self.text end }

local function is_array(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n == #t
end

-- A copy of v that dkjson writes exactly: numbers boxed with their exact
-- text, object keys as strings, each key collected in `keys`.
local function prepare(v, keys, path)
  local tv = type(v)
  if tv == "number" then
    local text = exact(v)
    return text and setmetatable({ text = text }, raw) or v
  elseif tv ~= "table" then
    return v
  end
  if path[v] then error("json: a table contains itself", 0) end
  path[v] = true
  local copy = {}
  if is_array(v) then
    for i = 1, #v do copy[i] = prepare(v[i], keys, path) end
  else
    for k, x in pairs(v) do
      local sk = tostring(k)
      keys[sk] = true
      copy[sk] = prepare(x, keys, path)
    end
  end
  path[v] = nil
  return copy
end

-- JSON text of v; `indent` (any true value) pretty-prints.  Raises on a
-- value JSON cannot hold (a function, a cycle).
function M.encode(v, indent)
  local dk = lib()
  local keys = {}
  local copy = prepare(v, keys, {})
  local order = {}
  for k in pairs(keys) do order[#order + 1] = k end
  table.sort(order)
  local s, err = dk.encode(copy, { indent = indent and true or false, keyorder = order,
    exception = function(reason, value) error(("json: %s (%s)"):format(reason, tostring(value)), 0) end })
  if not s then error("json: " .. tostring(err), 2) end
  return s
end

-- The value of JSON text s, or nil and where it went wrong.
function M.decode(s)
  local dk = lib()
  local v, pos, err = dk.decode(s, 1, nil, nil, nil)
  if err then return nil, "invalid JSON: " .. err end
  local rest = s:find("%S", pos)
  if rest then return nil, ("invalid JSON: text after the value at byte %d"):format(rest) end
  return v
end

return M
