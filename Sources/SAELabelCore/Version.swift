/// The version `saelabel --version` prints.
public enum SAELabelVersion {
    public static let current = "0.9.0"
}
