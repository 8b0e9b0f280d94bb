// A small JSON reader for model.json: enough of RFC 8259 to read any valid document, no writer.
// Written here rather than vendored so the runtime has no dependency beyond libtorch.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace slipway::json {

class Value {
 public:
  enum class Type { Null, Bool, Number, String, Array, Object };

  Type type() const { return type_; }
  bool is(Type t) const { return type_ == t; }
  bool as_bool() const { return bool_; }
  double as_number() const { return number_; }
  const std::string& as_string() const { return string_; }
  const std::vector<Value>& as_array() const { return array_; }
  const std::map<std::string, Value>& as_object() const { return object_; }

  // nullptr when this is not an object or has no such key.
  const Value* find(const std::string& key) const;

  static Value null() { return Value(Type::Null); }
  static Value boolean(bool b);
  static Value number(double d);
  static Value string(std::string s);
  static Value array(std::vector<Value> items);
  static Value object(std::map<std::string, Value> members);

  Value() = default;

 private:
  explicit Value(Type t) : type_(t) {}
  Type type_ = Type::Null;
  bool bool_ = false;
  double number_ = 0.0;
  std::string string_;
  std::vector<Value> array_;
  std::map<std::string, Value> object_;
};

const char* type_name(Value::Type t);

// Throws std::runtime_error naming the line and column of the first problem.
Value parse(const std::string& text);

}  // namespace slipway::json
