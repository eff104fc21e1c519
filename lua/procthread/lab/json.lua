-- procthread.lab.json: a small JSON encoder and decoder for the lab's
-- results.json (no external rock needed).  Runs on Lua 5.1-5.4 and LuaJIT.
--
-- encode(v [, indent]): objects get their keys sorted, so the same results
-- always give the same bytes.  A Lua table whose keys are exactly 1..n is an
-- array; an empty table is written as [] unless it carries the metatable
-- json.object.  NaN and infinities are written as null (JSON has neither).
-- decode(s) -> value, or nil, "json: <what> at byte <n>".  null decodes to
-- json.null (a sentinel) inside arrays, so positions are kept, and to an
-- absent key inside objects.
local M = {}

M.null = setmetatable({}, { __tostring = function() return "null" end })
M.object = { __jsontype = "object" }

local escapes = {
  ['"'] = '\\"', ['\\'] = '\\\\', ['\b'] = '\\b', ['\f'] = '\\f',
  ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t',
}

local function esc_char(c)
  return escapes[c] or ("\\u%04x"):format(c:byte())
end

local function encode_string(s)
  return '"' .. s:gsub('[%c"\\]', esc_char) .. '"'
end

local function is_int(v)
  return v == math.floor(v) and v >= -2^53 and v <= 2^53
end

local function encode_number(v)
  if v ~= v or v == math.huge or v == -math.huge then return "null" end
  if is_int(v) then return ("%.0f"):format(v) end
  local s = ("%.10g"):format(v)
  if tonumber(s) ~= v then s = ("%.17g"):format(v) end
  return s
end

local function array_length(t)
  local n = 0
  for k in pairs(t) do
    if type(k) ~= "number" or k < 1 or k ~= math.floor(k) then return nil end
    if k > n then n = k end
  end
  for i = 1, n do if t[i] == nil then return nil end end
  return n
end

local encode_value

local function encode_table(t, indent, level, seen, out)
  if seen[t] then error("json: cannot encode a cycle", 0) end
  seen[t] = true
  local nl, pad, pad1, colon = "", "", "", ":"
  if indent then
    nl = "\n"; pad = indent:rep(level); pad1 = indent:rep(level + 1); colon = ": "
  end
  local n = getmetatable(t) ~= M.object and array_length(t)
  if n then
    if n == 0 then out[#out + 1] = "[]"
    else
      -- short arrays of scalars stay on one line: samples are readable
      local flat = true
      for i = 1, n do if type(t[i]) == "table" and t[i] ~= M.null then flat = false; break end end
      out[#out + 1] = "["
      for i = 1, n do
        if i > 1 then out[#out + 1] = "," end
        if not flat then out[#out + 1] = nl .. pad1 end
        encode_value(t[i], indent, level + 1, seen, out)
      end
      if not flat then out[#out + 1] = nl .. pad end
      out[#out + 1] = "]"
    end
  else
    local keys = {}
    for k in pairs(t) do
      local tk = type(k)
      if tk == "string" then keys[#keys + 1] = k
      elseif tk == "number" then keys[#keys + 1] = k
      else error("json: cannot encode a key of type " .. tk, 0) end
    end
    table.sort(keys, function(a, b)
      local ta, tb = type(a), type(b)
      if ta ~= tb then return ta == "number" end
      return a < b
    end)
    if #keys == 0 then out[#out + 1] = "{}"
    else
      out[#out + 1] = "{"
      for i, k in ipairs(keys) do
        if i > 1 then out[#out + 1] = "," end
        out[#out + 1] = nl .. pad1
        local ks = type(k) == "number" and encode_number(k) or k
        out[#out + 1] = encode_string(ks) .. colon
        encode_value(t[k], indent, level + 1, seen, out)
      end
      out[#out + 1] = nl .. pad .. "}"
    end
  end
  seen[t] = nil
end

function encode_value(v, indent, level, seen, out)
  local tv = type(v)
  if v == nil or v == M.null then out[#out + 1] = "null"
  elseif tv == "boolean" then out[#out + 1] = tostring(v)
  elseif tv == "number" then out[#out + 1] = encode_number(v)
  elseif tv == "string" then out[#out + 1] = encode_string(v)
  elseif tv == "table" then encode_table(v, indent, level, seen, out)
  else error("json: cannot encode a value of type " .. tv, 0) end
end

function M.encode(v, indent)
  if indent == true then indent = "  " end
  local out = {}
  encode_value(v, indent, 0, {}, out)
  return table.concat(out)
end

-- ---- decoder ----------------------------------------------------------------

local function utf8char(cp)
  if cp < 0x80 then return string.char(cp) end
  if cp < 0x800 then
    return string.char(0xC0 + math.floor(cp / 64), 0x80 + cp % 64)
  end
  if cp < 0x10000 then
    return string.char(0xE0 + math.floor(cp / 4096), 0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
  end
  return string.char(0xF0 + math.floor(cp / 262144), 0x80 + math.floor(cp / 4096) % 64,
                     0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
end

local unescape = { b = "\b", f = "\f", n = "\n", r = "\r", t = "\t", ['"'] = '"', ['\\'] = '\\', ['/'] = '/' }

local function fail(what, pos) error({ json = ("json: %s at byte %d"):format(what, pos) }, 0) end

local decode_value

local function skip(s, pos)
  return (s:find("[^ \t\r\n]", pos)) or #s + 1
end

local function decode_string(s, pos)
  -- pos is at the opening quote
  local parts, i = {}, pos + 1
  while true do
    local j = s:find('["\\%c]', i)
    if not j then fail("unterminated string", pos) end
    parts[#parts + 1] = s:sub(i, j - 1)
    local c = s:sub(j, j)
    if c == '"' then return table.concat(parts), j + 1 end
    if c ~= "\\" then fail("control character in string", j) end
    local e = s:sub(j + 1, j + 1)
    if e == "u" then
      local hex = s:sub(j + 2, j + 5)
      if not hex:match("^%x%x%x%x$") then fail("bad \\u escape", j) end
      local cp = tonumber(hex, 16)
      local nexti = j + 6
      if cp >= 0xD800 and cp <= 0xDBFF and s:sub(nexti, nexti + 1) == "\\u" then
        local lo = tonumber(s:sub(nexti + 2, nexti + 5), 16)
        if lo and lo >= 0xDC00 and lo <= 0xDFFF then
          cp = 0x10000 + (cp - 0xD800) * 1024 + (lo - 0xDC00)
          nexti = nexti + 6
        end
      end
      parts[#parts + 1] = utf8char(cp)
      i = nexti
    elseif unescape[e] then
      parts[#parts + 1] = unescape[e]
      i = j + 2
    else
      fail("bad escape", j)
    end
  end
end

function decode_value(s, pos, depth)
  if depth > 200 then fail("nesting too deep", pos) end
  pos = skip(s, pos)
  local c = s:sub(pos, pos)
  if c == "{" then
    local t = {}
    pos = skip(s, pos + 1)
    if s:sub(pos, pos) == "}" then return setmetatable(t, M.object), pos + 1 end
    while true do
      pos = skip(s, pos)
      if s:sub(pos, pos) ~= '"' then fail("expected a string key", pos) end
      local k
      k, pos = decode_string(s, pos)
      pos = skip(s, pos)
      if s:sub(pos, pos) ~= ":" then fail("expected ':'", pos) end
      local v
      v, pos = decode_value(s, pos + 1, depth + 1)
      if v ~= M.null then t[k] = v end
      pos = skip(s, pos)
      c = s:sub(pos, pos)
      if c == "}" then return t, pos + 1 end
      if c ~= "," then fail("expected ',' or '}'", pos) end
      pos = pos + 1
    end
  elseif c == "[" then
    local t, n = {}, 0
    pos = skip(s, pos + 1)
    if s:sub(pos, pos) == "]" then return t, pos + 1 end
    while true do
      local v
      v, pos = decode_value(s, pos, depth + 1)
      n = n + 1; t[n] = v
      pos = skip(s, pos)
      c = s:sub(pos, pos)
      if c == "]" then return t, pos + 1 end
      if c ~= "," then fail("expected ',' or ']'", pos) end
      pos = pos + 1
    end
  elseif c == '"' then
    return decode_string(s, pos)
  elseif s:sub(pos, pos + 3) == "true" then return true, pos + 4
  elseif s:sub(pos, pos + 4) == "false" then return false, pos + 5
  elseif s:sub(pos, pos + 3) == "null" then return M.null, pos + 4
  else
    local num = s:match("^-?%d+%.?%d*[eE]?[-+]?%d*", pos)
    if not num or num == "" or num == "-" then
      if pos > #s then fail("unexpected end", pos) end
      fail("unexpected character '" .. c .. "'", pos)
    end
    local v = tonumber(num)
    if not v then fail("bad number", pos) end
    return v, pos + #num
  end
end

function M.decode(s)
  if type(s) ~= "string" then return nil, "json: expected a string, got " .. type(s) end
  local ok, v, pos = pcall(decode_value, s, 1, 0)
  if not ok then
    if type(v) == "table" and v.json then return nil, v.json end
    return nil, "json: " .. tostring(v)
  end
  pos = skip(s, pos)
  if pos <= #s then return nil, ("json: trailing data at byte %d"):format(pos) end
  if v == M.null then v = nil end
  return v
end

return M
