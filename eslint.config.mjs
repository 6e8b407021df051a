import effectPlugin from "@effect/eslint-plugin"
import tseslint from "typescript-eslint"

export default tseslint.config(
  { ignores: ["**/dist/**", "**/node_modules/**", "**/*.d.ts", "**/*.js", "**/*.mjs", "!eslint.config.mjs"] },
  ...tseslint.configs.recommended,
  {
    plugins: { "@effect": effectPlugin },
    rules: {
      "@effect/dprint": ["error", {
        config: {
          indentWidth: 2,
          lineWidth: 120,
          semiColons: "asi",
          quoteStyle: "alwaysDouble",
          trailingCommas: "never",
          operatorPosition: "maintain",
          "arrowFunction.useParentheses": "force"
        }
      }],
      "@typescript-eslint/no-explicit-any": "off",
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_" }],
      "@typescript-eslint/consistent-type-imports": "error",
      "@typescript-eslint/no-namespace": "off",
      "@typescript-eslint/no-empty-object-type": "off",
      "no-console": "error",
      "no-restricted-syntax": ["error", {
        selector: "ThrowStatement",
        message: "Fail with a typed Effect error instead of throwing."
      }]
    }
  },
  {
    files: ["**/test/**", "**/bench/**", "**/src/bin/**"],
    rules: { "no-console": "off" }
  },
  {
    files: ["**/bench/**"],
    rules: { "no-restricted-syntax": "off" }
  }
)
